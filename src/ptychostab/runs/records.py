"""Run records: the contract between a training job and the aggregator.

Each job owns one folder ``<output_root>/<sweep>/<arm_id>/seed=<k>/`` and writes:

- ``manifest.json`` at start (who, what, where, with which code),
- ``history.csv`` after every epoch (one row per epoch, columns in :data:`HISTORY_COLUMNS`),
- ``result.json`` at the end (status, failure, metrics), replaced only as
  :func:`may_replace` allows (a record is never demoted),
- ``last.ckpt``/``best.ckpt``, ``recon.npz``, ``traceback.txt``, ``run.log`` (the per-run log)
  and ``run.lock`` (liveness: :mod:`ptychostab.runs.lock`).

All of them are written by one per-run recorder (:mod:`ptychostab.runs.recorder`).

Every write is atomic (temporary file in the same folder, then ``os.replace``), so a reader
never sees half a file, and a job killed mid-write leaves the previous version intact.

This module is pure Python (no torch, no Hydra): the aggregator imports it, training imports it.
Readers never raise on damaged input: they return a :class:`Loaded` with a ``problem`` string.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptychostab.atomic import (  # noqa: F401  (re-exported: the record writers' API)
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

SCHEMA_VERSION = 1

MANIFEST = "manifest.json"
HISTORY = "history.csv"
RESULT = "result.json"
TRACEBACK = "traceback.txt"
ACTIVATIONS = "activations.csv"  # the drift probe's rows (ptychostab.diagnostics.drift)
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
RECON = "recon.npz"
RUN_LOG = "run.log"
RUN_LOCK = "run.lock"

# --- status taxonomy (docs/contracts.md "Run records: status families") ----------------------
OK = "ok"
#: instability: the study's result; numerator and denominator of the failure rate
INSTABILITY_KINDS = ("nonfinite", "diverged", "collapsed")
#: other final endings: ``exception`` (an error of our own code: a bug) and ``oom`` (an
#: out-of-memory error raised in the process); listed beside the rate, never inside it;
#: a rerun skips them unless asked (``retry=[oom,exception]``)
OTHER_FINAL_KINDS = ("exception", "oom")
FAILURE_KINDS = (*INSTABILITY_KINDS, *OTHER_FINAL_KINDS)
#: not final, written by a job: a rerun resumes (timeout, preempted, interrupted) or retries
#: (infra, with ``failure.cause``) them
INCOMPLETE_KINDS = ("infra", "timeout", "preempted", "interrupted")
#: not final, assigned by readers (the aggregator, the status view), never written by a job
READ_PROBLEMS = ("missing", "corrupt")
ALL_STATUSES = (OK, *FAILURE_KINDS, *INCOMPLETE_KINDS, *READ_PROBLEMS)
#: A final result is never retrained by a rerun (unless its kind is retried on request).
FINAL_STATUSES = frozenset((OK, *FAILURE_KINDS))
#: ``failure.cause`` of an ``infra`` record (the fault's origin, never the study's)
INFRA_CAUSES = ("disk", "device", "node", "memory", "data", "checkpoint", "other")

#: status -> family, as in docs/contracts.md (word for word)
FAMILIES = {
    OK: "ok",
    **{k: "instability" for k in INSTABILITY_KINDS},
    **{k: "other final" for k in OTHER_FINAL_KINDS},
    **{k: "not final" for k in (*INCOMPLETE_KINDS, *READ_PROBLEMS)},
}


def family(status: str | None) -> str:
    """The status family of a status (``not final`` for an unknown or absent one)."""
    return FAMILIES.get(status, "not final")


def is_instability(status: str | None) -> bool:
    """True for the study's failures: the numerator of the failure rate."""
    return status in INSTABILITY_KINDS


# Per-epoch history columns, in order. Extra columns are allowed after these.
HISTORY_COLUMNS = (
    "epoch",  # 0-based epoch index
    "global_step",  # optimizer steps completed at the end of this epoch
    "train_loss",  # mean training loss over the epoch
    "val_loss",  # validation loss (the run's val_loss_name) at the end of the epoch
    "grad_norm_pre_mean",
    "grad_norm_pre_median",
    "grad_norm_pre_max",
    "grad_norm_post_mean",
    "grad_norm_post_median",
    "grad_norm_post_max",
    "lr",  # learning rate used during this epoch
    "wall_s",  # seconds since the job started (cumulative, includes resumed segments)
)


def is_final(status: str | None) -> bool:
    """True when a run with this status must not be trained again."""
    return status in FINAL_STATUSES


def may_replace(current: str | None, new: str, *, by_run: bool) -> bool:
    """The never-demote rule: may a ``result.json`` with status ``current`` (None: none or
    unreadable) be replaced by one with status ``new``?

    - a final record is never replaced (a requested retry sets it aside first);
    - a non-final record may be replaced by another non-final one (``preempted`` by ``infra``,
      ``infra`` by ``preempted``, ...);
    - only the run itself finishing (``by_run``: the job that trained it, not a launcher or a
      callback recording from outside) replaces a non-final record with a final one.
    """
    if is_final(current):
        return False
    if is_final(new):
        return by_run
    return True


# --- atomic writers (one implementation: ptychostab.atomic) ---------------------------------
def write_csv(path: str | os.PathLike, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Rewrite a whole per-run CSV atomically: ``columns`` first, any other keys after them
    (sorted); None as an empty cell."""
    extra = sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns, *extra], extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_history(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite the whole ``history.csv`` atomically (a few hundred rows at most)."""
    write_csv(path, rows, HISTORY_COLUMNS)


def flatten(obj: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (``sep`` joins the keys; lists and empty mappings
    stay values)."""
    if not isinstance(obj, dict):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


# --- tolerant readers ------------------------------------------------------------------------
@dataclass
class Loaded:
    """What a reader found: the parsed object, or why there is none."""

    data: Any = None
    problem: str | None = None  # None, "absent", or a human-readable reason (corrupt file)
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None


def read_json(path: str | os.PathLike) -> Loaded:
    path = Path(path)
    if not path.exists():
        return Loaded(problem="absent")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return Loaded(problem=f"corrupt {path.name}: {err}")
    if not isinstance(data, dict):
        kind = type(data).__name__
        return Loaded(problem=f"corrupt {path.name}: top level is {kind}, not object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        return Loaded(data=data, problem=f"unknown schema_version {version!r} in {path.name}")
    return Loaded(data=data)


def read_history(path: str | os.PathLike) -> Loaded:
    """Rows as dicts of floats (empty cells -> NaN). Damaged rows are skipped and counted."""
    path = Path(path)
    if not path.exists():
        return Loaded(data=[], problem="absent")
    rows, bad = [], 0
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for raw in csv.DictReader(fh):
                try:
                    rows.append(
                        {k: (float(v) if v not in ("", None) else math.nan) for k, v in raw.items()
                         if k is not None}
                    )
                except (TypeError, ValueError):
                    bad += 1
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return Loaded(data=rows, problem=f"corrupt {path.name}: {err}")
    problem = f"corrupt {path.name}: {bad} unreadable rows" if bad else None
    return Loaded(data=rows, problem=problem, extra={"bad_rows": bad})


# --- record builders (keep the shape in one place) --------------------------------------------
def failure(kind: str, *, epoch: int | None, step: int | None, wall_s: float | None,
            message: str = "", cause: str | None = None) -> dict:
    """The ``failure`` block of ``result.json``. ``cause`` is required for ``infra`` (one of
    :data:`INFRA_CAUSES`) and absent (None) otherwise."""
    if kind not in FAILURE_KINDS + INCOMPLETE_KINDS:
        raise ValueError(f"failure kind {kind!r} not in {FAILURE_KINDS + INCOMPLETE_KINDS}")
    if kind == "infra" and cause not in INFRA_CAUSES:
        raise ValueError(f"failure.cause {cause!r} for infra not in {INFRA_CAUSES}")
    if kind != "infra" and cause is not None:
        raise ValueError(f"failure.cause is for infra only, not {kind!r}")
    out = {"kind": kind, "epoch": epoch, "step": step, "wall_s": wall_s, "message": message}
    if cause is not None:
        out["cause"] = cause
    return out


def result_record(*, status: str, sweep: str, arm_id: str, seed: int, failure_info: dict | None,
                  metrics: dict, metrics_best: dict | None, grad_norm: dict, epochs_completed: int,
                  global_step: int, wall_s: float, params: dict, peak_memory_bytes: int | None,
                  **extra: Any) -> dict:
    """The whole ``result.json``. ``metrics`` are for the final weights (primary),
    ``metrics_best`` for the best-by-val-loss checkpoint. ``metrics`` must hold
    ``val_loss_name``, ``best_val_loss``, ``final_val_loss`` and the evaluation metrics
    (``amp_ssim``, ``phase_ssim``, ``amp_mae``, ``phase_mae``, ``amp_psnr``, ``phase_psnr``, ...).
    ``grad_norm`` summarises the whole run: ``grad_norm_{pre,post}_{median,max}`` (median of the
    per-step norms, largest step), ``clip_fraction`` (share of steps where clipping changed a
    gradient) and the same for the last epoch prefixed ``final_``. ``extra`` carries at least
    ``arm`` (the arm dict, as in the manifest, so a run stays classifiable when its manifest is
    damaged), ``config_hash``, ``device`` and ``end_time``.
    """
    if status not in ALL_STATUSES:
        raise ValueError(f"status {status!r} not in {ALL_STATUSES}")
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "sweep": sweep,
        "arm_id": arm_id,
        "seed": seed,
        "failure": failure_info,
        "metrics": metrics,
        "metrics_best": metrics_best,
        "grad_norm": grad_norm,
        "epochs_completed": epochs_completed,
        "global_step": global_step,
        "wall_s": wall_s,
        "params": params,
        "peak_memory_bytes": peak_memory_bytes,
        **extra,
    }


# Keys every manifest.json carries (the job fills them; the aggregator relies on them).
MANIFEST_KEYS = (
    "schema_version", "sweep", "arm", "arm_id", "seed", "overrides", "config", "config_hash",
    "git", "versions", "host", "device", "slurm", "start_time", "effective",
)
