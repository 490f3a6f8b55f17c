"""THE reader of a sweep folder: which folders are runs, the seeds they hold, and ``plan.csv``.

A sweep folder (``<paths.output_root>/<sweep>/``) holds the sweep-level files named here and one
folder per arm, ``<arm_id>/``, holding one folder per run, ``seed=<integer>/`` (the run-level
files are :mod:`ptychostab.runs.records`'). The rule (docs/contracts.md, "Sweep folders"):

- a run folder is ``<arm_id>/seed=<integer>``; its seed is that integer (``seed=07`` is seed 7;
  ``seed=abc``, ``seed=`` and ``seed=-1`` are not run folders);
- a folder whose name starts with ``_`` or ``.`` is never an arm, nor a run (backups, scratch,
  ``.submitit``, ``_tmp``);
- anything else (files, folders without ``seed=``) is not a run and is ignored.

The status view (:mod:`ptychostab.monitor.status`), the aggregator
(:mod:`ptychostab.analysis.collect`), the dry run's done/failed column
(:mod:`ptychostab.launch.plan`) and the drift numbers all read sweep folders through this
module, so they cannot disagree about which runs a folder holds. Pure Python: no torch, no
Hydra.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

#: The grid of a sweep, written by the preflight / dry run (one row per job).
PLAN_CSV = "plan.csv"
#: The packs of a ``pack=K`` sweep, written by the preflight.
PACKS_JSON = "packs.json"
#: submitit's job folders (pickles, logs) inside a sweep folder.
SUBMITIT_DIR = ".submitit"
#: Which job of which launch trains each run folder (:mod:`ptychostab.launch.submitted`).
SUBMITTED_JSON = "submitted.json"
#: The sweep lock (one launch of a sweep at a time).
SWEEP_LOCK = ".sweep.lock"
SEED_PREFIX = "seed="
#: Name prefixes of folders that are never arms or runs.
HIDDEN_PREFIXES = ("_", ".")
#: Columns of ``plan.csv`` that stay text (never coerced to numbers).
PLAN_TEXT_COLUMNS = ("sweep", "arm_id", "arm_label", "label", "overrides")


def is_arm_folder_name(name: str) -> bool:
    """Whether a folder of this name directly under a sweep folder can be an arm."""
    return bool(name) and not name.startswith(HIDDEN_PREFIXES)


def seed_of(name: str) -> int | None:
    """The seed of a run folder's name (``seed=3`` -> 3), None when it is not a run folder."""
    if not name.startswith(SEED_PREFIX):
        return None
    raw = name[len(SEED_PREFIX):]
    return int(raw) if raw.isascii() and raw.isdigit() else None


def run_folder_name(seed: int) -> str:
    """``seed=<seed>``: the inverse of :func:`seed_of`."""
    return f"{SEED_PREFIX}{int(seed)}"


def run_dir(sweep_dir: str | os.PathLike, arm_id: str, seed: int) -> Path:
    """``<sweep_dir>/<arm_id>/seed=<seed>``."""
    return Path(sweep_dir) / arm_id / run_folder_name(seed)


def find_run_dirs(sweep_dir: str | os.PathLike) -> dict[tuple[str, int], Path]:
    """``{(arm_id, seed): run_dir}`` of every run folder (see the module rule), sorted by arm
    folder name then seed; ``{}`` when ``sweep_dir`` is not a folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return {}
    found: dict[tuple[str, int], Path] = {}
    for arm in sorted(os.scandir(sweep_dir), key=lambda d: d.name):
        if not arm.is_dir() or not is_arm_folder_name(arm.name):
            continue
        runs = []
        for run in os.scandir(arm.path):
            seed = seed_of(run.name)
            if seed is not None and run.is_dir():
                runs.append((seed, Path(run.path)))
        for seed, path in sorted(runs):
            found[(arm.name, seed)] = path
    return found


def coerce(text: Any) -> Any:
    """A ``plan.csv`` cell -> int, float, bool, None or the string itself."""
    if not isinstance(text, str):
        return text
    low = text.strip().lower()
    if low in ("", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_plan(sweep_dir: str | os.PathLike) -> tuple[list[dict] | None, str | None]:
    """Rows of ``plan.csv`` in grid order (cells coerced, text columns kept as text, ``seed``
    an int), or ``None`` when there is no plan; and a problem when it is damaged (then
    ``None``: the plan is the run folders found). Rows without an arm id or an integer seed
    are skipped, as :func:`find_run_dirs` skips such folders."""
    path = Path(sweep_dir) / PLAN_CSV
    if not path.exists():
        return None, None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return None, f"{path}: unreadable {PLAN_CSV} ({err}); plan = records found"
    if rows and not {"arm_id", "seed"} <= set(rows[0]):
        return None, f"{path}: {PLAN_CSV} lacks arm_id/seed columns; plan = records found"
    out = []
    for raw in rows:
        row = {k: (v if k in PLAN_TEXT_COLUMNS else coerce(v)) for k, v in raw.items()
               if k is not None}
        seed = row.get("seed")
        if not row.get("arm_id") or not isinstance(seed, int) or isinstance(seed, bool) or (
                seed < 0):
            continue
        out.append(row)
    return out, None


def run_key(sweep_dir: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """A run folder relative to its sweep folder (``<arm_id>/seed=<k>``), the key of
    ``submitted.json``; the absolute path when it lies elsewhere."""
    try:
        return Path(run_dir).absolute().relative_to(Path(sweep_dir).absolute()).as_posix()
    except ValueError:
        return Path(run_dir).absolute().as_posix()


def read_submitted(sweep_dir: str | os.PathLike) -> dict[str, dict]:
    """``submitted.json``'s runs: ``{run key: entry}``; empty when absent or unreadable."""
    try:
        data = json.loads((Path(sweep_dir) / SUBMITTED_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    runs = data.get("runs") if isinstance(data, dict) else None
    return {str(k): v for k, v in (runs or {}).items() if isinstance(v, dict)} if isinstance(
        runs, dict) else {}


def submitted_job_ids(sweep_dir: str | os.PathLike) -> dict[str, str]:
    """``{run key: SLURM job id}`` of ``submitted.json``'s SLURM entries."""
    return {k: str(v["job_id"]) for k, v in read_submitted(sweep_dir).items()
            if v.get("backend") == "slurm" and v.get("job_id")}
