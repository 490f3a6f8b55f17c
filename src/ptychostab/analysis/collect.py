"""Scan sweep folders into one row per run: the planned grid joined with the records found.

A sweep folder holds ``plan.csv`` (optional) and ``<arm_id>/seed=<k>/`` run folders with the
records of :mod:`ptychostab.runs.records`. Every planned run and every run folder found becomes
exactly one row; nothing is dropped:

==========================================  =====================================================
what is on disk                              ``status`` (``problem`` says why)
==========================================  =====================================================
readable ``result.json``                     its ``status`` (ok, a failure kind, timeout, ...)
``result.json`` unreadable / unknown schema  ``corrupt``
``result.json`` with an unknown status       ``corrupt``
``manifest.json`` only                       ``missing`` (``started`` true: running or killed)
empty run folder, or planned and no folder   ``missing``
==========================================  =====================================================

A damaged ``manifest.json`` next to a readable result keeps the result's status (and the arm
fields of the result's ``arm`` copy) and is reported in ``problem``. Runs found on disk but absent
from ``plan.csv`` get ``in_plan = False``. Without ``plan.csv`` the plan is the set of run folders
found. Arm columns: the manifest's ``arm`` dict (first run of the arm that has one), completed by
the plan's extra columns (the dry run's estimates and stale ``status`` are ignored).

``category`` is the status family (``ok``, ``instability``, ``other final``, ``not final``).
Time to failure (for Kaplan-Meier) is measured in completed epochs: an instability failure's
``epoch`` is the 0-based index of the epoch it happened in (= epochs completed before it) and
``event`` is true; every other run (ok, oom, exception, timeout, ...) is censored at
``epochs_completed``; a started run with no result
is censored at the number of rows in its ``history.csv``. Seconds follow the same rule
(``failure.wall_s``, else ``wall_s``).

``pack_size`` / ``pack_id``: the manifest's ``pack`` block (``{"id", "size", "members"}``,
written by a packed run; 1 / empty for a run alone in its process). A packed run's wall time
and ``peak_memory_bytes`` are its pack's process's (K seeds share them).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ptychostab.analysis import sweepdir
from ptychostab.analysis.protocol import protocol_of
from ptychostab.runs import records

#: status -> ``category`` column: the status family of docs/contracts.md (word for word)
CATEGORY = {s: records.family(s) for s in records.ALL_STATUSES}

# Metrics in this order first; any other numeric key of result["metrics"] follows, sorted.
KNOWN_METRICS = ("best_val_loss", "final_val_loss", "amp_ssim", "phase_ssim", "amp_mae",
                 "phase_mae", "amp_psnr", "phase_psnr", "amp_frc50", "phase_frc50")
# grad_norm block -> columns grad_norm_<key> (keys already naming grad_norm are kept as they are)
KNOWN_GRAD = ("grad_norm_pre_median", "grad_norm_pre_p99", "grad_norm_pre_max",
              "grad_norm_post_median", "grad_norm_post_max")
BEST_PREFIX = "best_ckpt_"
PLAN_RUN_COLUMNS = ("sweep", "arm_id", "arm_label", "label", "seed", "overrides")
# The dry run's per-job estimates and its (stale) status: not arm fields; status is re-read.
PLAN_IGNORED = ("params_real", "params_numel", "memory_gb_estimate", "est_minutes", "status",
                "pack")

ID_COLUMNS = ("sweep", "arm_id", "arm_label")
RUN_COLUMNS = (
    "seed", "status", "category", "in_plan", "started", "problem",
    "failure_kind", "failure_epoch", "failure_step", "failure_wall_s", "failure_message",
    "epochs_completed", "global_step", "wall_s", "event", "tte_epoch", "tte_s",
    "val_loss_name",
)
TAIL_COLUMNS = (
    "params_real", "params_numel", "peak_memory_bytes", "pack_size", "pack_id",
    "git_commit", "git_dirty", "set_phi", "phase_truth_constant", "outside_study", "overrides",
    "run_dir", "source", "log", "duplicate_of", "duplicate_conflict",
)


@dataclass
class Collected:
    """Rows of every planned or found run, plus what describes the columns."""

    runs: pd.DataFrame
    arm_columns: list[str] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # folder-level (bad plan.csv, ...)


# --- small helpers ---------------------------------------------------------------------------
def _num(value: Any) -> float:
    """Float of a JSON number; NaN for None, bools, strings and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _overrides_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _history_progress(run_dir: Path) -> tuple[float, float]:
    """(epochs recorded, last wall_s) from ``history.csv``; NaN when unreadable or empty."""
    rows = records.read_history(run_dir / records.HISTORY).data or []
    if not rows:
        return math.nan, math.nan
    return float(len(rows)), _num(rows[-1].get("wall_s"))


def _from_result(row: dict, res: dict) -> None:
    status = res.get("status")
    if status not in records.ALL_STATUSES or status == "corrupt":
        row.update(status="corrupt", problem=f"unknown status {status!r} in result.json")
        return
    row["status"] = status
    fail = res.get("failure") if isinstance(res.get("failure"), dict) else {}
    row.update(
        failure_kind=fail.get("kind") if status != records.OK else None,
        failure_epoch=_num(fail.get("epoch")), failure_step=_num(fail.get("step")),
        failure_wall_s=_num(fail.get("wall_s")),
        failure_message=str(fail.get("message") or "")[:200],
        epochs_completed=_num(res.get("epochs_completed")),
        global_step=_num(res.get("global_step")), wall_s=_num(res.get("wall_s")),
        params_real=_num(_dig(res, "params", "real")),
        params_numel=_num(_dig(res, "params", "numel")),
        peak_memory_bytes=_num(res.get("peak_memory_bytes")),
    )
    if status in records.FAILURE_KINDS and row["failure_kind"] is None:
        row["failure_kind"] = status
    grad = res.get("grad_norm") if isinstance(res.get("grad_norm"), dict) else {}
    row["_grad"] = {grad_column(k): _num(v) for k, v in grad.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not row["arm_fields"] and isinstance(res.get("arm"), dict):
        row["arm_fields"] = dict(res["arm"])  # manifest absent or damaged: the result's copy
    metrics = res.get("metrics") if isinstance(res.get("metrics"), dict) else {}
    row["val_loss_name"] = metrics.get("val_loss_name")
    row["phase_truth_constant"] = metrics.get("phase_truth_constant")
    row["_metrics"] = {k: _num(v) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
    best = res.get("metrics_best") if isinstance(res.get("metrics_best"), dict) else {}
    row["_best"] = {k: _num(v) for k, v in best.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
    # survival time: only instability is an event; every other ending is censored
    failed = records.is_instability(status)
    row["event"] = failed
    epoch = row["failure_epoch"] if failed else math.nan
    row["tte_epoch"] = epoch if math.isfinite(epoch) else row["epochs_completed"]
    secs = row["failure_wall_s"] if failed else math.nan
    row["tte_s"] = secs if math.isfinite(secs) else row["wall_s"]


def grad_column(key: str) -> str:
    """Column of a ``grad_norm`` key: ``pre_max`` -> ``grad_norm_pre_max``; names that already
    contain ``grad_norm`` stay as they are."""
    return key if "grad_norm" in key else f"grad_norm_{key}"


def _from_manifest(row: dict, man: dict) -> None:
    row["arm_fields"] = dict(man["arm"]) if isinstance(man.get("arm"), dict) else {}
    if man.get("sweep"):
        row["sweep"] = str(man["sweep"])
    git = man.get("git") if isinstance(man.get("git"), dict) else {}
    row["git_commit"] = git.get("commit")
    row["git_dirty"] = git.get("dirty")
    row["set_phi"] = _dig(man, "config", "data", "set_phi")
    row["outside_study"] = _dig(man, "config", "outside_study") is True
    row["_protocol"] = protocol_of(man.get("config"))
    depth = _dig(man, "config", "depth")
    if depth is None:
        depth = _dig(man, "config", "arch", "fno_blocks")
    if depth is not None:
        row["arm_fields"].setdefault("depth", depth)
    if row.get("overrides") in (None, ""):
        row["overrides"] = _overrides_text(man.get("overrides"))
    pack = man.get("pack") if isinstance(man.get("pack"), dict) else {}
    size = pack.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
        row["pack_size"], row["pack_id"] = size, pack.get("id")


def run_row(run_dir: Path | None) -> dict:
    """One run's row fields from its folder (``None``: planned, no folder)."""
    row: dict[str, Any] = {"status": "missing", "started": False, "problem": "", "event": False,
                           "tte_epoch": math.nan, "tte_s": math.nan, "arm_fields": {},
                           "pack_size": 1, "pack_id": None}
    if run_dir is None:
        row["problem"] = "planned, no run folder"
        return row
    problems = []
    man = records.read_json(run_dir / records.MANIFEST)
    if man.problem == "absent":
        pass
    elif man.ok:
        row["started"] = True
        _from_manifest(row, man.data)
    else:
        row["started"] = True
        problems.append(man.problem)
    res = records.read_json(run_dir / records.RESULT)
    if res.ok:
        _from_result(row, res.data)
        if row["status"] == "corrupt":
            problems.append(row["problem"])
    elif res.problem == "absent":
        if row["started"]:
            problems.append("no result.json (running or killed)")
            row["tte_epoch"], row["tte_s"] = _history_progress(run_dir)
        else:
            problems.append("empty run folder")
    else:
        row["status"] = "corrupt"
        problems.append(res.problem)
    row["problem"] = "; ".join(problems)
    row["log"] = records.RUN_LOG if (run_dir / records.RUN_LOG).is_file() else ""
    return row


# --- whole sweeps ----------------------------------------------------------------------------
def _plan_arm_fields(plan_row: dict) -> dict:
    fields = {k: v for k, v in plan_row.items()
              if k not in PLAN_RUN_COLUMNS and k not in PLAN_IGNORED}
    label = plan_row.get("arm_label", plan_row.get("label"))
    if label is not None:
        fields["label"] = label
    return fields


def collect_sweep(sweep_dir: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Rows (raw dicts) of one sweep folder and its folder-level problems."""
    sweep_dir = Path(sweep_dir)
    problems: list[str] = []
    if not sweep_dir.is_dir():
        return [], [f"{sweep_dir}: not a folder"]
    plan, plan_problem = sweepdir.read_plan(sweep_dir)
    if plan_problem:
        problems.append(plan_problem)
    found = sweepdir.find_run_dirs(sweep_dir)
    planned = {(r["arm_id"], r["seed"]): r for r in (plan or [])}
    keys = list(planned) + [k for k in found if k not in planned]
    rows = []
    for key in keys:
        plan_row = planned.get(key)
        row = run_row(found.get(key))
        row.update(arm_id=key[0], seed=key[1], in_plan=plan is None or plan_row is not None,
                   source=sweep_dir.name, run_dir=f"{key[0]}/{sweepdir.run_folder_name(key[1])}",
                   _path=str(found[key]) if key in found else None)
        row.setdefault("sweep", None)
        if plan_row is not None:
            row["_plan_fields"] = _plan_arm_fields(plan_row)
            row["sweep"] = row["sweep"] or plan_row.get("sweep")
            if not row.get("overrides"):
                row["overrides"] = _overrides_text(plan_row.get("overrides"))
        row["sweep"] = str(row["sweep"] or sweep_dir.name)
        rows.append(row)
    if plan is not None and not plan and not found:
        problems.append(f"{sweep_dir}: plan.csv lists no runs")
    return rows, problems


def _arm_fields_by_arm(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (sweep, arm_id): the first manifest's arm dict, completed by the plan's columns."""
    out: dict[tuple[str, str], dict] = {}
    for row in sorted(rows, key=lambda r: (not r["arm_fields"], str(r["seed"]))):
        key = (row["sweep"], row["arm_id"])
        fields = out.setdefault(key, {})
        for source in (row["arm_fields"], row.get("_plan_fields") or {}):
            for k, v in source.items():
                fields.setdefault(k, v)
    return out


def _names(rows: list[dict], key: str, known: tuple[str, ...]) -> list[str]:
    seen = set()
    for row in rows:
        seen.update(row.get(key, {}))
    return [m for m in known if m in seen] + sorted(seen - set(known))


def collect(sweep_dirs: list[str | os.PathLike]) -> Collected:
    """One table of every planned or found run in ``sweep_dirs`` (see the module docstring).

    Returns
    -------
    Collected
        ``runs`` with columns ``sweep, arm_id, arm_label, <arm columns>, seed, status, ...,
        <metrics>, best_ckpt_<metrics>, grad_norm_*, ...``; the arm column and metric names; and
        folder-level problems (missing folder, damaged plan.csv).
    """
    rows, problems = [], []
    for d in sweep_dirs:
        r, p = collect_sweep(d)
        rows += r
        problems += p
    rows, found_twice = deduplicate(rows)
    problems += found_twice
    arm_fields = _arm_fields_by_arm(rows)
    metric_names = _names(rows, "_metrics", KNOWN_METRICS)
    grad_names = _names(rows, "_grad", KNOWN_GRAD)
    reserved = (set(ID_COLUMNS) | set(RUN_COLUMNS) | set(TAIL_COLUMNS) | set(metric_names)
                | set(grad_names))
    arm_columns: list[str] = []
    for fields in arm_fields.values():
        for k in fields:
            name = _arm_column(k, reserved)
            if name and name not in arm_columns:
                arm_columns.append(name)
    table = []
    for row in rows:
        out = {"sweep": row["sweep"], "arm_id": row["arm_id"]}
        fields = arm_fields[(row["sweep"], row["arm_id"])]
        out["arm_label"] = str(fields.get("label") or row["arm_id"])
        for k, v in fields.items():
            name = _arm_column(k, reserved)
            if name:
                out[name] = v
        for col in RUN_COLUMNS:
            out[col] = row.get(col)
        metrics, best = row.get("_metrics", {}), row.get("_best", {})
        for m in metric_names:
            out[m] = metrics.get(m, math.nan)
        for m in metric_names:
            out[BEST_PREFIX + m] = best.get(m, math.nan)
        grad = row.get("_grad", {})
        for g in grad_names:
            out[g] = grad.get(g, math.nan)
        for col in TAIL_COLUMNS:
            out[col] = row.get(col)
        out["category"] = CATEGORY[out["status"]]
        out["_path"] = row.get("_path")
        out["_protocol"] = row.get("_protocol")
        table.append(out)
    columns = [*ID_COLUMNS, *arm_columns, *RUN_COLUMNS, *metric_names,
               *(BEST_PREFIX + m for m in metric_names), *grad_names, *TAIL_COLUMNS,
               "_path", "_protocol"]
    runs = pd.DataFrame(table, columns=columns)
    return Collected(runs=runs, arm_columns=arm_columns, metric_names=metric_names,
                     problems=problems)


def _where(row: dict) -> str:
    return f"{row.get('source')}/{row.get('run_dir')}"


def _has_records(row: dict) -> bool:
    return row.get("_path") is not None and (row["status"] != "missing" or bool(row["started"]))


def _same_result(a: dict, b: dict) -> bool:
    """Same status and the same metrics (NaN equal to NaN)."""
    if a["status"] != b["status"]:
        return False
    ma, mb = a.get("_metrics", {}), b.get("_metrics", {})
    if set(ma) != set(mb):
        return False
    return all((math.isnan(ma[k]) and math.isnan(mb[k])) or math.isclose(ma[k], mb[k],
                                                                        rel_tol=1e-12)
               for k in ma)


def deduplicate(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per (sweep, arm_id, seed), the sweep as the manifest names it: the same run found
    in two folders (a folder passed twice, a copied sweep) counts once. When every copy with
    records agrees on status and metrics the first is kept and a warning names both; when they
    differ the first is kept with ``duplicate_conflict`` naming them (the decision is then
    INCOMPLETE). Copies without
    records (planned only, never started) give way to one with records.

    Returns
    -------
    (rows, warnings)
    """
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["sweep"], row["arm_id"], row["seed"]), []).append(row)
    out, warnings = [], []
    for (_, arm_id, seed), group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        real = [r for r in group if _has_records(r)]
        keep = (real or group)[0]
        out.append(keep)
        where = " and ".join(_where(r) for r in real)
        if len(real) < 2:
            continue
        keep["duplicate_of"] = "; ".join(_where(r) for r in real[1:])
        if all(_same_result(real[0], r) for r in real[1:]):
            warnings.append(f"run {arm_id} seed={seed} found {len(real)} times ({where}) with "
                            "the same result: counted once")
        else:
            what = ", ".join(f"{_where(r)}: {r['status']}" for r in real)
            keep["duplicate_conflict"] = f"found {len(real)} times with different results ({what})"
            warnings.append(f"run {arm_id} seed={seed} found {len(real)} times with different "
                            f"results ({what}): the decision cannot use it (INCOMPLETE)")
    return out, warnings


def _arm_column(key: str, reserved: set[str]) -> str | None:
    """Column name of an arm field: ``label`` is ``arm_label``; clashes get ``arm_``."""
    if key == "label":
        return None
    return f"arm_{key}" if key in reserved else key


def load_history(run_path: str | os.PathLike | None) -> list[dict]:
    """The rows of a run's ``history.csv`` (empty when absent or unreadable)."""
    if not isinstance(run_path, (str, os.PathLike)) or not run_path:
        return []  # planned, no folder (NaN in a DataFrame)
    return records.read_history(Path(run_path) / records.HISTORY).data or []
