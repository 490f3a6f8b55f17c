"""The clip sweep's own reading (strategy section 2: "to confirm conclusions are not artifacts
of aggressive clipping"): failure rate and median loss against the clip value, beside the
unclipped Stage A control, and Kendall's tau-b between the clip value and each run's 0/1
instability outcome (``scipy.stats.kendalltau``). It does not enter the outcome. The numbers
only: :mod:`ptychostab.report.clip_section` writes the section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ptychostab.analysis import protocol
from ptychostab.analysis.rule import CLIP
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


@dataclass
class ClipNumbers:
    """The clip sweep beside the Stage A control."""

    arms: pd.DataFrame  # the clip sweep's summary rows, by clip value
    control: pd.Series | None  # the Stage A control's summary row
    tau: float  # Kendall's tau-b, clip value vs 0/1 instability (NaN: not defined)
    p_value: float
    n_finished: int  # the finished runs (ok + instability) behind tau
    #: (arm label, differences from the control's protocol but ``clip.*``; depth included),
    #: for the arms whose protocol and the control's are known
    protocol_diffs: list[tuple[str, list[tuple[str, Any, Any]]]] = field(default_factory=list)
    #: why the control is not compared with the clipped arms ([]: it is)
    not_compared: list[str] = field(default_factory=list)
    #: the clipped arms' spread: the union of their 95% intervals (failure rate: Wilson; median
    #: of the metric: bootstrap), (low, high); NaN when no arm has one
    rate_spread: tuple[float, float] = (math.nan, math.nan)
    median_spread: tuple[float, float] = (math.nan, math.nan)

    @property
    def compared(self) -> bool:
        return self.control is not None and not self.not_compared


def spread_of(lows, highs) -> tuple[float, float]:
    """``(min of the finite lows, max of the finite highs)``: the union of intervals."""
    lo = [float(v) for v in lows if _finite(v)]
    hi = [float(v) for v in highs if _finite(v)]
    return (min(lo) if lo else math.nan, max(hi) if hi else math.nan)


def within(value: float, spread: tuple[float, float]) -> bool | None:
    """Whether ``value`` lies in the spread, edges included (None: cannot be said)."""
    lo, hi = spread
    if not (_finite(value) and _finite(lo) and _finite(hi)):
        return None
    eps = 1e-12 * max(1.0, abs(lo), abs(hi))
    return lo - eps <= value <= hi + eps


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def clip_numbers(runs: pd.DataFrame, summary: pd.DataFrame, protocols: dict,
                 metric: str = "best_val_loss") -> ClipNumbers | None:
    """The clip sweep's numbers; None when no clip sweep was aggregated. The Stage A control
    is compared only when it and every clipped arm share a protocol but ``clip.*`` (depth
    included)."""
    arms = clip_arms(summary)
    if arms.empty:
        return None
    ctrl = stage_a_control(summary)
    diffs, why = [], []
    if ctrl is None:
        why.append("no Stage A control aggregated beside it")
    else:
        pa = protocol.as_arm_protocol(protocols.get(
            (str(ctrl["stage"]), str(ctrl["sweep"]), str(ctrl["arm_id"])))).protocol
        if pa is None:
            why.append("the Stage A control's protocol is unknown (no readable manifest)")
        for _, r in arms.iterrows():
            pb = protocol.as_arm_protocol(protocols.get(
                (str(r["stage"]), str(r["sweep"]), str(r["arm_id"])))).protocol
            if pb is None:
                why.append(f"the protocol of {r['arm_label']} is unknown (no readable manifest)")
            elif pa is not None:
                found = protocol.differences(pa, pb, (), ("clip.",))
                if found:
                    diffs.append((str(r["arm_label"]), found))
        why += [f"{label} differs from the Stage A control in "
                + ", ".join(k for k, _, _ in found) for label, found in diffs]
    tau, p, n = kendall(runs)
    rates = spread_of(arms.get("failure_rate_lo", []), arms.get("failure_rate_hi", []))
    medians = spread_of(arms.get(f"{metric}_ci_lo", []), arms.get(f"{metric}_ci_hi", []))
    return ClipNumbers(arms, ctrl, tau, p, n, diffs, why, rates, medians)
