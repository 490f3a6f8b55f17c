"""One row per arm: counts, failure rate, metric spreads and intervals, survival, roles.

Definitions (``summary.csv``; :mod:`ptychostab.report.rule_text` renders them for the report):

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
- ``role``: the arm's role in its stage (:mod:`.roles`, resolved once); ``rel_change``:
  ``median(metric) / median(control's metric) - 1`` of the rule's metric, with a bootstrap 95%
  interval, against the control arm of the same stage.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ptychostab.analysis import roles as roles_mod
from ptychostab.analysis import stats
from ptychostab.analysis.roles import Roles
from ptychostab.analysis.rule import DecisionRule
from ptychostab.runs import records

STAGE_ORDER = {"A": 0, "B": 1, "clip": 2, "outside": 3, "": 4}
#: every status but ok (one ``n_<status>`` column each)
NOT_OK = tuple(k for k in records.ALL_STATUSES if k != records.OK)
#: the not-final family: written by a job (a rerun resumes or retries them) or by a reader
NOT_FINAL = (*records.INCOMPLETE_KINDS, *records.READ_PROBLEMS)
#: unsettled: every ending but ok and instability (beside the failure rate, never inside it)
UNSETTLED = (*records.OTHER_FINAL_KINDS, *NOT_FINAL)


def _counts(status: np.ndarray) -> dict:
    """Counts by status and family; failure rate = instability / (ok + instability)."""
    out = {"n_planned": int(status.size), "n_ok": int((status == records.OK).sum())}
    for kind in NOT_OK:
        out[f"n_{kind}"] = int((status == kind).sum())
    out["n_instability"] = sum(out[f"n_{k}"] for k in records.INSTABILITY_KINDS)
    out["n_other_final"] = sum(out[f"n_{k}"] for k in records.OTHER_FINAL_KINDS)
    out["n_not_final"] = sum(out[f"n_{k}"] for k in NOT_FINAL)
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
              rule: DecisionRule, control: str | None = None,
              reps: int = stats.BOOTSTRAP_REPS, seed: int = stats.BOOTSTRAP_SEED
              ) -> tuple[pd.DataFrame, Roles]:
    """One row per arm (stage, sweep, arm_id): counts, failure rate, metrics, survival, roles;
    and the roles, resolved once among those rows (:func:`.roles.resolve`).

    ``runs`` needs a ``stage`` column (see :func:`ptychostab.analysis.pipeline.tag_stages`).
    """
    if runs.empty:
        return (pd.DataFrame(columns=["stage", "sweep", "arm_id", "arm_label", "role"]),
                roles_mod.resolve([], rule, control))
    columns = _Columns(runs, arm_columns, metric_names)
    groups = runs.groupby(["stage", "sweep", "arm_id"], sort=False).indices
    rows = [_arm_row(columns, idx, metric_names, reps, seed, rule.median_ci_level)
            for idx in groups.values()]
    summary = _sort_key(pd.DataFrame(rows)).reset_index(drop=True)
    roles = roles_mod.resolve(summary.to_dict("records"), rule, control)
    return _add_roles_and_change(summary, runs, roles, rule, reps, seed), roles


def _add_roles_and_change(summary: pd.DataFrame, runs: pd.DataFrame, roles: Roles,
                          rule: DecisionRule, reps: int, seed: int) -> pd.DataFrame:
    rows = summary.to_dict("records")
    summary.insert(4, "role", [roles.role_of(r["stage"], (r["sweep"], r["arm_id"]))
                               for r in rows])
    metric = rule.metric
    change = {"control_arm": [], "control_sweep": [], "control_arm_id": [], "rel_change": [],
              "rel_change_lo": [], "rel_change_hi": []}
    ok = runs[runs["status"] == records.OK]
    ok_values = {k: g[metric].to_numpy(dtype=float) if metric in g else np.array([])
                 for k, g in ok.groupby(["stage", "sweep", "arm_id"], sort=False)}
    by_key = {(r["stage"], r["sweep"], r["arm_id"]): r for r in rows}
    for r in rows:
        key = roles.control_of(r["stage"], r["sweep"])
        c = by_key.get((r["stage"], *key)) if key is not None else None
        est = (math.nan,) * 3
        if c is not None and c is not r:
            x = ok_values.get((r["stage"], r["sweep"], r["arm_id"]), np.array([]))
            y = ok_values.get((c["stage"], c["sweep"], c["arm_id"]), np.array([]))
            est = stats.bootstrap_median_diff(x, y, relative=True, reps=reps, seed=seed)
        for key_, name in (("control_arm", "arm_label"), ("control_sweep", "sweep"),
                           ("control_arm_id", "arm_id")):
            change[key_].append(c[name] if c is not None else "")
        for key_, v in zip(("rel_change", "rel_change_lo", "rel_change_hi"), est, strict=True):
            change[key_].append(v)
    for key_, values in change.items():
        summary[key_] = values
    summary["rel_change_metric"] = metric
    return summary
