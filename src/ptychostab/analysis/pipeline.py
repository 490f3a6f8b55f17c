"""Aggregate sweep folders: runs.csv, summary.csv, report.md and plots/.

``aggregate([outputs/stage_a, outputs/stage_b])`` scans the folders
(:mod:`ptychostab.analysis.collect`), tags every run with its stage, summarises each arm
(:func:`summarize`), evaluates the decision rule (:mod:`ptychostab.analysis.decide`) and writes
the outputs. It reads records only; it never imports training code.

Per-arm definitions (``summary.csv``; :mod:`ptychostab.report.rule_text` renders them for
the report):

- Status families as in docs/contracts.md: ``failure_rate = n_instability / n_done`` with
  ``n_done = n_ok + n_instability`` and a 95% Wilson interval; every other ending
  (``n_other_final``: oom, exception; ``n_not_final``: infra, timeout, preempted,
  interrupted, missing, corrupt; together ``n_unsettled``, listed in ``unsettled_runs``) is
  beside the rate, never inside it.
- Metrics: median, q25, q75, IQR over ``ok`` runs' finite values, ``<m>_n`` of them; the
  median's distribution-free order-statistic interval ``<m>_os_lo/hi`` with its actual
  coverage ``<m>_os_coverage`` (NaN: too few values for the rule's level), and a
  percentile-bootstrap interval ``<m>_ci_lo/hi`` (``B = 2000``, seed 0).
- Time to failure: Kaplan-Meier over runs with a known time (instability failures are events;
  every other run is censored at its last epoch), in epochs and seconds.
- ``rel_change``: ``median(metric) / median(control's metric) - 1`` of the rule's metric,
  with a bootstrap 95% interval, against the control arm of the same stage.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ptychostab.analysis import activation_drift as drift
from ptychostab.analysis import decide as dec
from ptychostab.analysis import stats
from ptychostab.analysis.collect import Collected, collect
from ptychostab.report import render as rep
from ptychostab.runs import records

STAGE_ORDER = {"A": 0, "B": 1, "clip": 2, "": 3}
NOT_OK = tuple(k for k in records.ALL_STATUSES if k != records.OK)
UNSETTLED = (*records.OTHER_FINAL_KINDS, *records.INCOMPLETE_KINDS, *records.READ_PROBLEMS)


@dataclass
class Aggregate:
    runs: pd.DataFrame
    summary: pd.DataFrame
    decision: dec.Decision
    warnings: list[str]
    report: str
    files: list[Path] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    arm_columns: list[str] = field(default_factory=list)


# --- per arm ---------------------------------------------------------------------------------
def _counts(status: np.ndarray) -> dict:
    """Counts by status and family; failure rate = instability / (ok + instability)."""
    out = {"n_planned": int(status.size), "n_ok": int((status == records.OK).sum())}
    for kind in NOT_OK:
        out[f"n_{kind}"] = int((status == kind).sum())
    out["n_instability"] = sum(out[f"n_{k}"] for k in records.INSTABILITY_KINDS)
    out["n_other_final"] = sum(out[f"n_{k}"] for k in records.OTHER_FINAL_KINDS)
    out["n_not_final"] = sum(out[f"n_{k}"] for k in (*records.INCOMPLETE_KINDS,
                                                       *records.READ_PROBLEMS))
    out["n_unsettled"] = out["n_other_final"] + out["n_not_final"]
    out["n_done"] = out["n_ok"] + out["n_instability"]
    lo, hi = stats.wilson_interval(out["n_instability"], out["n_done"])
    rate = out["n_instability"] / out["n_done"] if out["n_done"] else math.nan
    out.update(failure_rate=rate, failure_rate_lo=lo, failure_rate_hi=hi)
    return out


def _order_ci(values: np.ndarray, metric_names: list[str], level: float) -> dict:
    """Order-statistic interval of each metric's median, with its actual coverage."""
    out = {}
    for j, m in enumerate(metric_names):
        ci = stats.order_statistic_median_ci(values[:, j] if values.size else [], level)
        out.update({f"{m}_os_lo": ci.lo, f"{m}_os_hi": ci.hi, f"{m}_os_coverage": ci.coverage})
    return out


def _metric_stats(values: np.ndarray, metric_names: list[str], reps: int, seed: int) -> dict:
    """Spread and bootstrap CI of each metric column (rows: the arm's ok runs)."""
    cols = stats.column_summaries(values.reshape(len(values), len(metric_names)), reps=reps,
                                  seed=seed)
    out = {}
    for j, m in enumerate(metric_names):
        out.update({f"{m}_{k}": (int(v[j]) if k == "n" else float(v[j]))
                    for k, v in cols.items()})
    return out


def _survival(tte_epoch: np.ndarray, tte_s: np.ndarray, event: np.ndarray) -> dict:
    out = {}
    for unit, times in (("epoch", tte_epoch), ("s", tte_s)):
        t, s = stats.kaplan_meier(times, event)
        out[f"km_median_{unit}"] = stats.km_median(t, s)
        if unit == "epoch":
            out["km_survival_final"] = stats.km_final(s)
    return out


def _first(values) -> object:
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return v
    return None


def _vacuous(runs: pd.DataFrame) -> np.ndarray:
    """Runs whose ground-truth phase is constant (or set_phi off): phase metrics mean nothing."""
    const = runs["phase_truth_constant"].map(lambda v: v is True)
    no_phi = runs["set_phi"].map(lambda v: v is False)
    return (const | no_phi).to_numpy(dtype=bool)


class _Columns:
    """The runs table as numpy arrays, so per-arm work is array slicing, not pandas."""

    def __init__(self, runs: pd.DataFrame, arm_columns: list[str], metric_names: list[str]):
        self.ident = {c: runs[c].to_numpy(dtype=object)
                      for c in ("stage", "sweep", "arm_id", "arm_label", *arm_columns)}
        self.status = runs["status"].to_numpy(dtype=object)
        self.val_loss_name = runs["val_loss_name"].to_numpy(dtype=object)
        self.params_real = runs["params_real"].to_numpy(dtype=object)
        self.wall_s = runs["wall_s"].to_numpy(dtype=float)
        self.event = runs["event"].fillna(False).to_numpy(dtype=bool)
        self.tte_epoch = runs["tte_epoch"].to_numpy(dtype=float)
        self.tte_s = runs["tte_s"].to_numpy(dtype=float)
        self.vacuous = _vacuous(runs)
        self.metrics = runs[metric_names].to_numpy(dtype=float)
        self.seed = runs["seed"].to_numpy(dtype=object)
        self.grad = {c: runs[c].to_numpy(dtype=float) if c in runs else
                     np.full(len(runs), np.nan)
                     for c in ("grad_norm_pre_median", "grad_norm_pre_max")}


def _unsettled_runs(seeds: np.ndarray, status: np.ndarray) -> str:
    """``seed=3 (oom); seed=5 (missing)``: the runs that ended otherwise."""
    return "; ".join(f"seed={s} ({k})" for s, k in zip(seeds, status, strict=True)
                     if k in UNSETTLED)


def _arm_row(c: _Columns, idx: np.ndarray, metric_names: list[str], reps: int,
             seed: int, level: float) -> dict:
    row = {k: v[idx[0]] for k, v in c.ident.items()}
    status = c.status[idx]
    row.update(_counts(status))
    row["unsettled_runs"] = _unsettled_runs(c.seed[idx], status)
    ok = idx[status == records.OK]
    finite_max = stats.finite(c.grad["grad_norm_pre_max"][idx])
    row["grad_norm_pre_median_median"] = stats.spread(c.grad["grad_norm_pre_median"][idx]).median
    row["grad_norm_pre_max_max"] = float(finite_max.max()) if finite_max.size else math.nan
    names = sorted({str(v) for v in c.val_loss_name[idx] if isinstance(v, str) and v})
    row["val_loss_name"] = ",".join(names)
    row["median_wall_s_ok"] = stats.spread(c.wall_s[ok]).median
    row["params_real"] = _first(c.params_real[idx])
    row["n_phase_vacuous"] = int(c.vacuous[idx].sum())
    row.update(_survival(c.tte_epoch[idx], c.tte_s[idx], c.event[idx]))
    row.update(_metric_stats(c.metrics[ok], metric_names, reps, seed))
    row.update(_order_ci(c.metrics[ok], metric_names, level))
    return row


def _sort_key(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(_o=df["stage"].map(STAGE_ORDER)).sort_values(
        ["_o", "sweep", "arm_label", "arm_id"], kind="stable").drop(columns="_o")


def summarize(runs: pd.DataFrame, arm_columns: list[str], metric_names: list[str],
              rule: dec.DecisionRule, control: str | None = None,
              reps: int = stats.BOOTSTRAP_REPS, seed: int = stats.BOOTSTRAP_SEED
              ) -> pd.DataFrame:
    """One row per arm (stage, sweep, arm_id): counts, failure rate, metrics, survival, roles.

    ``runs`` needs a ``stage`` column (see :func:`tag_stages`).
    """
    if runs.empty:
        return pd.DataFrame(columns=["stage", "sweep", "arm_id", "arm_label", "role"])
    columns = _Columns(runs, arm_columns, metric_names)
    groups = runs.groupby(["stage", "sweep", "arm_id"], sort=False).indices
    rows = [_arm_row(columns, idx, metric_names, reps, seed, rule.median_ci_level)
            for idx in groups.values()]
    summary = _sort_key(pd.DataFrame(rows)).reset_index(drop=True)
    return _add_roles_and_change(summary, runs, rule, control, reps, seed)


def _controls(rows: list[dict], rule, control) -> dict[int, dict]:
    """Index of each arm row -> its control row (same stage; same sweep if ambiguous)."""
    def control_of(key: tuple) -> dict | None:
        if key not in cache:
            found, _ = dec.resolve_roles([x for x in rows if (x["stage"], x["sweep"])[:len(key)]
                                          == key], rule, control)
            cache[key] = found.get("control")
        return cache[key]

    cache: dict[tuple, dict | None] = {}
    out = {}
    for i, r in enumerate(rows):
        if r["stage"] in dec.STAGES:
            c = control_of((r["stage"],)) or control_of((r["stage"], r["sweep"]))
            if c is not None:
                out[i] = c
    return out


def _add_roles_and_change(summary, runs, rule, control, reps, seed) -> pd.DataFrame:
    rows = summary.to_dict("records")
    role = [""] * len(rows)
    for stage in ("A", "B"):
        idx = [i for i, r in enumerate(rows) if r["stage"] == stage]
        found, _ = dec.resolve_roles([rows[i] for i in idx], rule, control)
        for name, r in found.items():
            role[next(i for i in idx if rows[i] is r)] = name
    summary.insert(4, "role", role)
    metric = rule.metric
    change = {"control_arm": [], "control_sweep": [], "control_arm_id": [], "rel_change": [],
              "rel_change_lo": [], "rel_change_hi": []}
    ok = runs[runs["status"] == records.OK]
    ok_values = {k: g[metric].to_numpy(dtype=float) if metric in g else np.array([])
                 for k, g in ok.groupby(["stage", "sweep", "arm_id"], sort=False)}
    controls = _controls(rows, rule, control)
    for i, r in enumerate(rows):
        c = controls.get(i)
        est = (math.nan,) * 3
        if c is not None and c is not r:
            x = ok_values.get((r["stage"], r["sweep"], r["arm_id"]), np.array([]))
            y = ok_values.get((c["stage"], c["sweep"], c["arm_id"]), np.array([]))
            est = stats.bootstrap_median_diff(x, y, relative=True, reps=reps, seed=seed)
        for key, name in (("control_arm", "arm_label"), ("control_sweep", "sweep"),
                          ("control_arm_id", "arm_id")):
            change[key].append(c[name] if c is not None else "")
        for key, v in zip(("rel_change", "rel_change_lo", "rel_change_hi"), est, strict=True):
            change[key].append(v)
    for key, values in change.items():
        summary[key] = values
    summary["rel_change_metric"] = metric
    return summary


# --- whole pipeline --------------------------------------------------------------------------
def tag_stages(collected: Collected, rule: dec.DecisionRule) -> pd.DataFrame:
    """Add the ``stage`` column (``A``/``B``/``""``) after ``sweep``."""
    runs = collected.runs.copy()
    depth = runs["depth"] if "depth" in runs else [None] * len(runs)
    stage = [dec.stage_of(s, d, rule) for s, d in zip(runs["sweep"], depth, strict=True)]
    runs.insert(1, "stage", stage)
    return runs


def default_out_dir(sweep_dirs: list[Path]) -> Path:
    """The sweep folder itself; for several, ``<parent of the first>/report_<a>+<b>``."""
    if len(sweep_dirs) == 1:
        return sweep_dirs[0]
    return sweep_dirs[0].parent / ("report_" + "+".join(d.name for d in sweep_dirs))


class IncompleteSweepError(RuntimeError):
    """Raised by ``aggregate(require_complete=True)`` when a planned run is unfinished."""


def unfinished_text(runs: pd.DataFrame) -> str | None:
    """``"k of n planned runs unfinished: ..."``, or None when every run has a final status."""
    if runs.empty:
        return "no runs found"
    bad = runs[runs["category"] == "not final"]
    if bad.empty:
        return None
    kinds = ", ".join(f"{n} {s}" for s, n in sorted(bad["status"].value_counts().items()))
    return f"{len(bad)} of {len(runs)} planned runs unfinished: {kinds}"


def aggregate(sweep_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None,
              rule: dec.DecisionRule | None = None, control: str | None = None,
              plots: bool = True, write: bool = True, require_complete: bool = False,
              reps: int = stats.BOOTSTRAP_REPS, seed: int = stats.BOOTSTRAP_SEED) -> Aggregate:
    """Collect, summarise, decide, and (``write``) write runs.csv, summary.csv, report.md, plots/.

    Parameters
    ----------
    sweep_dirs : list of path
        Sweep folders (``outputs/<sweep>``); Stage A and Stage B may be separate folders.
    out_dir : path, optional
        Where to write; default :func:`default_out_dir`.
    rule : DecisionRule, optional
        Default: ``conf/decision/default.yaml``.
    control : str, optional
        Arm label(s) or arm_id(s), comma-separated, that play the control (overrides the
        rule's control role; a stage uses the one among its arms).
    plots : bool, default True
        Write ``plots/*.png`` (matplotlib, Agg backend).
    write : bool, default True
        False computes everything and writes nothing.
    require_complete : bool, default False
        Raise :class:`IncompleteSweepError` (before writing anything) when a planned run is
        unfinished (missing, timeout, preempted, corrupt) or no run is found.
    reps, seed : int
        Bootstrap resamples and RNG seed (defaults 2000 and 0).
    """
    dirs = [Path(d) for d in sweep_dirs]
    rule = rule or dec.load_rule()
    collected = collect(dirs)
    if require_complete and (why := unfinished_text(collected.runs)):
        raise IncompleteSweepError(why)
    runs = tag_stages(collected, rule)
    summary = summarize(runs, collected.arm_columns, collected.metric_names, rule, control,
                        reps=reps, seed=seed)
    protocols = arm_protocols(runs)
    decision = dec.decide(summary.to_dict("records"), rule, control, protocols)
    keys = summary[["sweep", "arm_id"]].itertuples(index=False, name=None)
    roles = dict(zip(keys, summary["role"], strict=True))
    run_keys = runs[["sweep", "arm_id"]].itertuples(index=False, name=None)
    runs.insert(2, "role", [roles.get(k, "") for k in run_keys])
    warnings = rep.warnings_for(runs, summary, collected.problems, rule)
    out = Path(out_dir) if out_dir else default_out_dir(dirs)
    files: list[Path] = []
    plot_notes: list[str] = []
    if write and plots:
        from ptychostab.report import plots as plotting  # matplotlib only when asked

        made, plot_notes = plotting.make_plots(runs, summary, out / "plots",
                                               collected.metric_names, rule)
        files += made
    drift_lines = drift.drift_section(drift_runs(runs), report_dir=out, plots_dir=out / "plots",
                                      plots=write and plots)
    text = rep.render(runs, summary, decision, warnings, rule,
                      sources=[d.name for d in dirs], metric_names=collected.metric_names,
                      plots=[p.relative_to(out).as_posix() for p in files], reps=reps, seed=seed,
                      out_dir=out, protocols=protocols, plot_notes=plot_notes,
                      drift_lines=drift_lines)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        runs.drop(columns=["_path", "_protocol"]).to_csv(out / "runs.csv", index=False)
        summary.to_csv(out / "summary.csv", index=False)
        records.atomic_write_text(out / "report.md", text)
        files = [out / "runs.csv", out / "summary.csv", out / "report.md", *files]
    return Aggregate(runs, summary, decision, warnings, text, files, collected.metric_names,
                     collected.arm_columns)


def drift_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The columns :func:`~ptychostab.analysis.activation_drift.drift_section` reads, one row
    per run."""
    n = len(runs)

    def col(name, default=None):
        return runs[name].to_numpy() if name in runs else [default] * n

    return pd.DataFrame({"run_dir": col("_path"), "status": col("status"),
                         "failure_epoch": col("failure_epoch"), "stage": col("stage", ""),
                         "arm": col("arm_label"), "role": col("role", ""),
                         "depth": col("depth")})


def arm_protocols(runs: pd.DataFrame) -> dict[tuple[str, str, str], dict | None]:
    """``(stage, sweep, arm_id) ->`` the first readable manifest's flattened identity config."""
    out: dict[tuple[str, str, str], dict | None] = {}
    if runs.empty:
        return out
    for key, proto in zip(runs[["stage", "sweep", "arm_id"]].itertuples(index=False, name=None),
                          runs["_protocol"], strict=True):
        key = tuple(str(k) for k in key)
        if out.get(key) is None:
            out[key] = proto if isinstance(proto, dict) else None
    return out
