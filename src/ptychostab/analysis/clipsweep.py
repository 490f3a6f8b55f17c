"""The clip sweep's own reading (strategy section 2: "to confirm conclusions are not artifacts
of aggressive clipping"): failure rate and median loss against the clip value, beside the
unclipped Stage A control, and Kendall's tau-b between the clip value and each run's 0/1
instability outcome (``scipy.stats.kendalltau``). It does not enter the outcome.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ptychostab.analysis import protocol
from ptychostab.analysis.rule import CLIP, DecisionRule, fmt
from ptychostab.report.rule_text import table
from ptychostab.report.tables import os_interval, rate_cell
from ptychostab.runs import records


def clip_arms(summary: pd.DataFrame) -> pd.DataFrame:
    """The clip sweep's arms, ordered by clip value."""
    if summary.empty or "stage" not in summary:
        return summary.iloc[0:0]
    g = summary[summary["stage"] == CLIP]
    if "clip_value" not in g:
        return g
    return g.assign(_v=pd.to_numeric(g["clip_value"], errors="coerce")).sort_values(
        "_v", kind="stable").drop(columns="_v")


def stage_a_control(summary: pd.DataFrame) -> pd.Series | None:
    sel = summary[(summary["stage"] == "A") & (summary["role"] == "control")] \
        if len(summary) else summary
    return sel.iloc[0] if len(sel) else None


def kendall(runs: pd.DataFrame) -> tuple[float, float, int]:
    """Kendall's tau-b (and p-value) between clip value and 0/1 instability over the clip
    sweep's finished runs (ok + instability); NaN when either has no variation."""
    from scipy.stats import kendalltau

    g = runs[(runs["stage"] == CLIP) & runs["category"].isin(["ok", "instability"])]
    x = pd.to_numeric(g.get("clip_value", pd.Series(dtype=float)), errors="coerce").to_numpy()
    y = g["status"].map(records.is_instability).to_numpy(dtype=float)
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    if x.size < 2 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return math.nan, math.nan, int(x.size)
    res = kendalltau(x, y, variant="b")
    return float(res.statistic), float(res.pvalue), int(x.size)


def _within(value: float, values: list[float]) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not math.isfinite(value) or not vals:
        return "cannot be said (no value)"
    lo, hi = min(vals), max(vals)
    inside = lo <= value <= hi
    return (f"{fmt(value)} {'lies within' if inside else 'lies outside'} the clipped spread "
            f"[{fmt(lo)}, {fmt(hi)}]")


def clip_section(runs: pd.DataFrame, summary: pd.DataFrame, rule: DecisionRule,
                 protocols: dict, plot: str | None = None) -> list[str]:
    """The report's "Clip sweep" section ([] when no clip sweep was aggregated)."""
    arms = clip_arms(summary)
    if arms.empty:
        return []
    m = rule.metric
    ctrl = stage_a_control(summary)
    rows = [[fmt(r.get("clip_value")), r["n_planned"], r["n_ok"], rate_cell(r),
             r["n_unsettled"], fmt(r.get(f"{m}_median", math.nan)),
             os_interval(r, m, rule.median_ci_level)] for _, r in arms.iterrows()]
    if ctrl is not None:
        rows.append([f"none (Stage A control {ctrl['arm_label']})", ctrl["n_planned"],
                     ctrl["n_ok"], rate_cell(ctrl), ctrl["n_unsettled"],
                     fmt(ctrl.get(f"{m}_median", math.nan)),
                     os_interval(ctrl, m, rule.median_ci_level)])
    lines = ["## Clip sweep (control sensitivity to global norm clipping)", "",
             "Not part of the GOLD/SILVER/PIVOT rule: it checks whether Stage A's reading is an "
             "artefact of aggressive clipping.", ""]
    lines += table(["clip value", "Planned", "OK", "Failure rate [95% Wilson]", "Unsettled",
                    f"median {m}", "median interval"], rows) + [""]
    rates = [float(r["failure_rate"]) for _, r in arms.iterrows()]
    meds = [float(r.get(f"{m}_median", math.nan)) for _, r in arms.iterrows()]
    if ctrl is None:
        lines.append("- No Stage A control aggregated beside it: nothing to compare with.")
    else:
        rate = _within(float(ctrl["failure_rate"]), rates)
        lines.append(f"- Stage A control failure rate: {rate}.")
        lines.append(f"- Stage A control median {m}: "
                     f"{_within(float(ctrl.get(f'{m}_median', math.nan)), meds)}.")
        for _, r in arms.iterrows():
            pa = protocols.get((str(ctrl["stage"]), str(ctrl["sweep"]), str(ctrl["arm_id"])))
            pb = protocols.get((str(r["stage"]), str(r["sweep"]), str(r["arm_id"])))
            if pa is not None and pb is not None:
                diffs = protocol.differences(pa, pb, protocol.DEPTH_KEYS, ("clip.",))
                if diffs:
                    lines.append(f"- Protocol differs from the Stage A control "
                                 f"({r['arm_label']}): " + protocol.describe(
                                     diffs, str(ctrl["arm_label"]), str(r["arm_label"])))
    tau, p, n = kendall(runs)
    if math.isfinite(tau):
        trend = "trends" if p < 0.05 else "shows no significant trend"
        lines.append(f"- Failure rate vs clip value: Kendall's tau-b = {tau:+.3f}, p = {p:.3g} "
                     f"over {n} finished runs: the instability outcome {trend} with the clip "
                     "value (at the 5% level).")
    else:
        lines.append(f"- Failure rate vs clip value: Kendall's tau-b not defined over {n} "
                     "finished runs (no variation in the clip value or in the outcome).")
    if plot:
        lines += ["", f"![{plot}]({plot})"]
    return lines + [""]
