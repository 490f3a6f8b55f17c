"""The caveats a study carries (the report's Warnings, the CLI's ``warning:`` lines), from the
runs and summary tables: unsettled and damaged records, runs outside the plan, too few
successful seeds, mixed or dirty git commits, vacuous phase metrics, mixed val losses, arms in
no stage. Plain sentences, in a fixed order.
"""

from __future__ import annotations

import math

import pandas as pd

from ptychostab.analysis.rule import DecisionRule
from ptychostab.runs import records

MAX_LISTED = 20  # runs named one by one in a warning before "... and k more"
STAGE_TITLE = {"A": "Stage A", "B": "Stage B", "clip": "Clip sweep",
               "outside": "Outside the study", "": "Unstaged arms"}


def listing(items: list[str]) -> str:
    """At most :data:`MAX_LISTED` items, then ``... and k more``."""
    head = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return head + (f", ... and {more} more" if more > 0 else "")


def _run_name(r) -> str:
    return f"{r['sweep']}/{r['arm_label']}/seed={r['seed']}"


def _incomplete_warnings(runs: pd.DataFrame) -> list[str]:
    out = []
    for status in (*records.OTHER_FINAL_KINDS, *records.INCOMPLETE_KINDS, "missing"):
        sel = runs[runs["status"] == status]
        if len(sel):
            started = int(sel["started"].fillna(False).astype(bool).sum())
            extra = (f" ({started} started without a result: running or killed)"
                     if status == "missing" and started else "")
            out.append(f"{len(sel)} {status} run(s){extra}: "
                       + listing([_run_name(r) for _, r in sel.iterrows()]))
    bad = runs[runs["status"] == "corrupt"]
    if len(bad):
        out.append(f"{len(bad)} corrupt record(s): "
                   + listing([f"{_run_name(r)} ({r['problem']})" for _, r in bad.iterrows()]))
    damaged = runs[(runs["status"] != "corrupt") & runs["problem"].fillna("").str.contains(
        "corrupt|schema_version", regex=True)]
    if len(damaged):
        out.append(f"{len(damaged)} run(s) with a damaged manifest (result used): "
                   + listing([f"{_run_name(r)} ({r['problem']})"
                              for _, r in damaged.iterrows()]))
    unplanned = runs[~runs["in_plan"].astype(bool)]
    if len(unplanned):
        out.append(f"{len(unplanned)} run folder(s) not in plan.csv: "
                   + listing([_run_name(r) for _, r in unplanned.iterrows()]))
    return out


def _git_warnings(runs: pd.DataFrame) -> list[str]:
    started = runs[runs["started"].fillna(False).astype(bool)]
    commits = started["git_commit"].dropna()
    commits = commits[commits.astype(str) != ""]
    out = []
    counts = commits.astype(str).value_counts()
    if len(counts) > 1:
        out.append("mixed git commits: " + ", ".join(
            f"{c[:10]} ({n} runs)" for c, n in sorted(counts.items())))
    dirty = int(started["git_dirty"].map(lambda v: v is True).sum())
    if dirty:
        out.append(f"{dirty} run(s) from a dirty working tree (uncommitted changes)")
    unknown = len(started) - len(commits)
    if unknown:
        out.append(f"{unknown} started run(s) without a git commit in the manifest")
    return out


def warnings_for(runs: pd.DataFrame, summary: pd.DataFrame, problems: list[str],
                 rule: DecisionRule) -> list[str]:
    """Every warning the report lists, in a fixed order."""
    out = list(problems)
    if runs.empty:
        return out + ["no runs found (no plan.csv rows and no <arm_id>/seed=<k> folders)"]
    out += _incomplete_warnings(runs)
    few = summary[summary["n_ok"] < rule.min_successful_seeds]
    if len(few):
        out.append(f"arm(s) with fewer than {rule.min_successful_seeds} successful seeds: "
                   + listing([f"{r['arm_label']} ({r['n_ok']} ok, stage {r['stage'] or '-'})"
                               for _, r in few.iterrows()]))
    out += _git_warnings(runs)
    vac = int(summary["n_phase_vacuous"].sum()) if "n_phase_vacuous" in summary else 0
    if vac:
        out.append(f"{vac} run(s) with a constant ground-truth phase (set_phi off?): "
                   "their phase metrics are vacuous")
    for stage, g in summary.groupby("stage", sort=True):
        names = sorted({n for v in g["val_loss_name"] for n in str(v).split(",") if n})
        if len(names) > 1:
            out.append(f"{STAGE_TITLE[stage]}: arms report different val losses "
                       f"({', '.join(names)}): loss comparisons mix metrics")
    lone = summary[summary["stage"] == ""]
    if len(lone):
        names = sorted(f"{r['sweep']}/{r['arm_label']}" for _, r in lone.iterrows())
        out.append("arm(s) in no stage (not in the decision): " + listing(names))
    outside = summary[summary["stage"] == "outside"]
    if len(outside):
        names = sorted(f"{r['sweep']}/{r['arm_label']}" for _, r in outside.iterrows())
        out.append("arm(s) of sweeps declared outside the study (outside_study: listed apart, "
                   "not in the decision): " + listing(names))
    out += nonfinite_metric_warnings(runs, rule)
    return out


def nonfinite_metric_warnings(runs: pd.DataFrame, rule: DecisionRule) -> list[str]:
    """ok runs whose loss or an SSIM of the rule is not finite: no clean success (the decision
    counts them as nonfinite in its nonfinite limits and as unsettled elsewhere)."""
    metrics = [m for m in (rule.metric, *rule.ssim_metrics)]
    ok = runs[runs["status"] == records.OK]
    bad = []
    for _, r in ok.iterrows():
        names = [m for m in metrics if not _finite(r.get(m))]
        if names:
            bad.append(f"{_run_name(r)} ({', '.join(names)})")
    if not bad:
        return []
    return [f"{len(bad)} ok run(s) with a non-finite loss or SSIM (nonfinite in the decision's "
            "nonfinite limits, unsettled elsewhere): " + listing(bad)]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)
