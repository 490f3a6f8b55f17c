"""The hypothesis's numbers: activation drift per arm and stage, against epoch and depth.

Reads each run's ``activations.csv`` (written by :mod:`ptychostab.diagnostics.drift`; columns
``epoch, block, name, level, resolution, channels, out_mean, ...``; epoch -1 = initialisation)
and nothing else of training. Definitions, stated in the report as well:

- *level drift* of a run at an epoch: the signed mean of the output of the **last block of a
  level** (where the residual stream has accumulated that level's updates);
- *drift* ``D``: the largest level drift of the run at that epoch (the most drifted level);
- *before failure*: the :data:`PRE_FAILURE_EPOCHS` last recorded epochs before a run's failure
  epoch (failed = an instability status), against the same epochs of the runs of that arm and
  stage that survived (status ``ok``).

Every number the report's reading quotes (:mod:`ptychostab.report.drift_section`) comes from
:func:`reading_numbers`; :func:`load_drift` gathers what the section and its plots need into a
:class:`DriftData`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ptychostab.runs import records
from ptychostab.runs.records import ACTIVATIONS

PRE_FAILURE_EPOCHS = 5
NO_FOLDER = "<no folder"  # the run key of a planned run without a folder (no activations)

__all__ = ["ACTIVATIONS", "PRE_FAILURE_EPOCHS", "DriftData", "drift_runs", "drift_series",
           "failure_epochs", "level_drift", "load_activations", "load_drift", "reading_numbers"]


def load_activations(run_dirs: dict[str, Path]) -> pd.DataFrame:
    """All runs' rows, with a ``run`` column (the key of ``run_dirs``); empty if none exist."""
    frames = []
    for key, run_dir in run_dirs.items():
        path = Path(run_dir) / ACTIVATIONS
        if not path.exists():
            continue
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        need = {"epoch", "block", "level", "out_mean"}
        if df.empty or not need <= set(df.columns):
            continue
        df = df.dropna(subset=["epoch", "block", "level"])
        df["run"] = key
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def level_drift(acts: pd.DataFrame) -> pd.DataFrame:
    """Per run, epoch and level: the last block's signed mean (``run, epoch, level, drift``)."""
    if acts.empty:
        return pd.DataFrame(columns=["run", "epoch", "level", "drift"])
    last = acts.sort_values("block").groupby(["run", "epoch", "level"], as_index=False).last()
    return last[["run", "epoch", "level", "out_mean"]].rename(columns={"out_mean": "drift"})


def drift_series(acts: pd.DataFrame) -> pd.DataFrame:
    """Per run and epoch: ``D`` = the largest level drift (``run, epoch, D``)."""
    lv = level_drift(acts)
    if lv.empty:
        return pd.DataFrame(columns=["run", "epoch", "D"])
    return lv.groupby(["run", "epoch"], as_index=False)["drift"].max().rename(
        columns={"drift": "D"})


def _median(values) -> float:
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def _pre_failure(series: pd.DataFrame, failed: dict[str, int], survived: list[str]
                 ) -> tuple[float, float, int, int]:
    """Median D over the last epochs before each failure, and over the same epochs of the
    survivors; with the run counts behind each."""
    fail_vals, surv_vals, n_f = [], [], 0
    for run, f_epoch in failed.items():
        window = [e for e in range(f_epoch - PRE_FAILURE_EPOCHS, f_epoch) if e >= 0]
        s = series[(series["run"] == run) & series["epoch"].isin(window)]
        if s.empty:
            continue
        n_f += 1
        fail_vals += s["D"].tolist()
        t = series[series["run"].isin(survived) & series["epoch"].isin(window)]
        surv_vals += t["D"].tolist()
    n_s = int(series[series["run"].isin(survived)]["run"].nunique()) if surv_vals else 0
    return _median(fail_vals), _median(surv_vals), n_f, n_s


def reading_numbers(runs: pd.DataFrame, acts: pd.DataFrame) -> dict:
    """The numbers behind the plain reading, per (stage, arm role or label).

    ``runs`` needs ``run``, ``status``, ``failure_epoch``, ``stage``, ``arm``, ``role`` and
    ``depth`` columns. Returns ``{(stage, arm): {...}}`` with ``D_init``, ``D_end`` (medians over
    seeds of D at epoch -1 and at each run's last recorded epoch), ``depth``, ``n_runs``,
    ``update_abs_init`` / ``update_abs_end`` (median over seeds of the mean |update| over blocks),
    and the pre-failure comparison ``pre_fail``, ``pre_survived``, ``n_failed``,
    ``n_survived``.
    """
    series = drift_series(acts)
    out: dict = {}
    if series.empty:
        return out
    upd = (acts.groupby(["run", "epoch"], as_index=False)["update_abs_mean"].mean()
           if "update_abs_mean" in acts else pd.DataFrame(columns=["run", "epoch",
                                                                   "update_abs_mean"]))
    for (stage, arm), g in runs.groupby(["stage", "arm"], sort=False):
        have = [r for r in g["run"] if r in set(series["run"])]
        if not have:
            continue
        s = series[series["run"].isin(have)]
        last_epoch = s.groupby("run")["epoch"].transform("max")
        u = upd[upd["run"].isin(have)]
        u_last = u.groupby("run")["epoch"].transform("max") if not u.empty else None
        failed = {r: e for r, e in failure_epochs(g).items() if r in have}
        survived = [r for r, st in zip(g["run"], g["status"], strict=True)
                    if st == records.OK and r in have]
        pre_f, pre_s, n_f, n_s = _pre_failure(series, failed, survived)
        out[(stage, arm)] = {
            "role": g["role"].iloc[0], "depth": _first_finite(g["depth"]), "n_runs": len(have),
            "D_init": _median(s[s["epoch"] == -1]["D"]),
            "D_end": _median(s[s["epoch"] == last_epoch]["D"]),
            "update_abs_init": _median(u[u["epoch"] == -1]["update_abs_mean"])
            if not u.empty else math.nan,
            "update_abs_end": _median(u[u["epoch"] == u_last]["update_abs_mean"])
            if not u.empty else math.nan,
            "pre_fail": pre_f, "pre_survived": pre_s, "n_failed": n_f, "n_survived": n_s,
            "n_failed_total": len(failed),
        }
    return out


def failure_epochs(g: pd.DataFrame) -> dict[str, int]:
    """``run -> failure epoch`` of a group's instability failures with a known epoch."""
    return {r: int(e) for r, st, e in zip(g["run"], g["status"], g["failure_epoch"], strict=True)
            if records.is_instability(st) and finite_number(e)}


def finite_number(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _first_finite(values):
    for v in values:
        if finite_number(v):
            return int(float(v))
    return None


# --- gathered for the report -----------------------------------------------------------------
@dataclass
class DriftData:
    """What the drift section and its plots need: one row per run (``run`` key, ``run_dir``,
    ``status``, ``failure_epoch``, ``stage``, ``arm`` label, ``role``, ``depth``), every run's
    activation rows (``run`` column; empty: none recorded) and :func:`reading_numbers`."""

    runs: pd.DataFrame
    acts: pd.DataFrame
    numbers: dict


def drift_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs table's columns the drift numbers read, one row per run, with its ``run`` key
    (the folder; ``<no folder i>`` for a planned run without one)."""
    n = len(runs)

    def col(name, default=None):
        return runs[name].to_numpy() if name in runs else [default] * n

    out = pd.DataFrame({"run_dir": col("_path"), "status": col("status"),
                        "failure_epoch": col("failure_epoch"), "stage": col("stage", ""),
                        "arm": col("arm_label"), "role": col("role", ""),
                        "depth": col("depth")})
    return with_run_keys(out)


def with_run_keys(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (with a ``run_dir`` column) plus the ``run`` key of each row."""
    runs = runs.copy()
    # a planned run with no folder has no path (NaN): it has no activations either
    runs["run"] = [str(x) if isinstance(x, (str, Path)) and str(x) else f"{NO_FOLDER} {i}>"
                   for i, x in enumerate(runs["run_dir"])]
    return runs


def load_drift(runs: pd.DataFrame) -> DriftData:
    """Read the activations of ``runs`` (one row per run with ``run_dir``, ``status``,
    ``failure_epoch``, ``stage``, ``arm``, ``role``, ``depth``: :func:`drift_runs` of the
    runs table) and compute the reading's numbers."""
    runs = runs if "run" in runs else with_run_keys(runs)
    acts = load_activations({r: Path(r) for r in runs["run"] if not r.startswith(NO_FOLDER)})
    return DriftData(runs, acts, reading_numbers(runs, acts))
