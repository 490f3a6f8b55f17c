"""The report's "Clip sweep" section, from :class:`ptychostab.analysis.clipsweep.ClipNumbers`:
failure rate and median loss per clip value beside the unclipped Stage A control, whether the
control lies within the clipped spread, protocol differences, Kendall's tau-b."""

from __future__ import annotations

import math

from ptychostab.analysis import protocol
from ptychostab.analysis.clipsweep import ClipNumbers, within
from ptychostab.analysis.rule import DecisionRule, fmt
from ptychostab.report.markdown import image, table
from ptychostab.report.tables import os_interval, rate_cell


def _within(value: float, spread: tuple[float, float], what: str) -> str:
    inside = within(value, spread)
    if inside is None:
        return "cannot be said (no value or no interval)"
    lo, hi = spread
    return (f"{fmt(value)} {'lies within' if inside else 'lies outside'} the clipped arms' "
            f"spread [{fmt(lo)}, {fmt(hi)}] (the union of their 95% {what} intervals, edges "
            "included)")


def clip_section(clip: ClipNumbers | None, rule: DecisionRule,
                 plot: str | None = None) -> list[str]:
    """The section's Markdown lines ([] when no clip sweep was aggregated); ``plot``: the
    clip-sweep figure's path relative to the report."""
    if clip is None:
        return []
    arms, ctrl, m = clip.arms, clip.control, rule.metric
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
    if not clip.compared:
        lines.append("- Not compared with the Stage A control: " + "; ".join(clip.not_compared)
                     + " (a comparison needs the same protocol but the clipping, depth "
                     "included).")
    else:
        rate = _within(float(ctrl["failure_rate"]), clip.rate_spread, "Wilson")
        lines.append(f"- Stage A control failure rate: {rate}.")
        lines.append(f"- Stage A control median {m}: "
                     + _within(float(ctrl.get(f"{m}_median", math.nan)), clip.median_spread,
                               "bootstrap") + ".")
    if ctrl is not None:
        for label, diffs in clip.protocol_diffs:
            lines.append(f"- Protocol differs from the Stage A control ({label}): "
                         + protocol.describe(diffs, str(ctrl["arm_label"]), label))
    tau, p, n = clip.tau, clip.p_value, clip.n_finished
    if math.isfinite(tau):
        trend = "trends" if p < 0.05 else "shows no significant trend"
        lines.append(f"- Failure rate vs clip value: Kendall's tau-b = {tau:+.3f}, p = {p:.3g} "
                     f"over n = {n} finished runs (ok and instability; unsettled runs left out): "
                     f"the instability outcome {trend} with the clip value (at the 5% level).")
    else:
        lines.append(f"- Failure rate vs clip value: Kendall's tau-b not defined over n = {n} "
                     "finished runs (ok and instability; no variation in the clip value or in "
                     "the outcome).")
    if plot:
        lines += ["", image(plot, plot)]
    return lines + [""]
