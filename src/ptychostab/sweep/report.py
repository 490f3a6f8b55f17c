"""Markdown study report and its warnings, from the runs and summary tables.

Pure text: no timestamps and no absolute paths, so the same records give the same bytes
(the golden test relies on it).
"""

from __future__ import annotations

import math

import pandas as pd

from ptychostab.runs import records
from ptychostab.sweep import stats
from ptychostab.sweep.decide import Decision, DecisionRule, fmt

MEANING = {  # strategy section 5
    "gold": "stable_hybrid becomes the default FNO architecture",
    "silver": "AGC becomes the mandatory training policy for FNO models",
    "pivot": "neither fix qualifies: investigate LayerScale (explicit depth damping)",
    "incomplete": "not decided yet",
}
MAX_LISTED = 20  # runs named one by one in a warning before "... and k more"
STAGE_TITLE = {"A": "Stage A", "B": "Stage B", "": "Unstaged arms"}


# --- warnings --------------------------------------------------------------------------------
def _listing(items: list[str]) -> str:
    head = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return head + (f", ... and {more} more" if more > 0 else "")


def _run_name(r) -> str:
    return f"{r['sweep']}/{r['arm_label']}/seed={r['seed']}"


def _incomplete_warnings(runs: pd.DataFrame) -> list[str]:
    out = []
    for status in ("missing", "timeout", "preempted"):
        sel = runs[runs["status"] == status]
        if len(sel):
            started = int(sel["started"].fillna(False).astype(bool).sum())
            extra = (f" ({started} started without a result: running or killed)"
                     if status == "missing" and started else "")
            out.append(f"{len(sel)} {status} run(s){extra}: "
                       + _listing([_run_name(r) for _, r in sel.iterrows()]))
    bad = runs[runs["status"] == "corrupt"]
    if len(bad):
        out.append(f"{len(bad)} corrupt record(s): "
                   + _listing([f"{_run_name(r)} ({r['problem']})" for _, r in bad.iterrows()]))
    damaged = runs[(runs["status"] != "corrupt") & runs["problem"].fillna("").str.contains(
        "corrupt|schema_version", regex=True)]
    if len(damaged):
        out.append(f"{len(damaged)} run(s) with a damaged manifest (result used): "
                   + _listing([f"{_run_name(r)} ({r['problem']})"
                               for _, r in damaged.iterrows()]))
    unplanned = runs[~runs["in_plan"].astype(bool)]
    if len(unplanned):
        out.append(f"{len(unplanned)} run folder(s) not in plan.csv: "
                   + _listing([_run_name(r) for _, r in unplanned.iterrows()]))
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
                   + _listing([f"{r['arm_label']} ({r['n_ok']} ok, stage {r['stage'] or '-'})"
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
        out.append("arm(s) in no stage (not in the decision): " + _listing(names))
    return out


# --- tables ----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _interval(lo, hi) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _failed_kinds(r) -> str:
    parts = [f"{r[f'n_{k}']} {k}" for k in records.FAILURE_KINDS if r.get(f"n_{k}", 0)]
    return ", ".join(parts) if parts else "0"


def _incomplete_kinds(r) -> str:
    parts = [f"{r[f'n_{k}']} {k}" for k in ("missing", "timeout", "preempted", "corrupt")
             if r.get(f"n_{k}", 0)]
    return ", ".join(parts) if parts else "0"


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def stability_table(g: pd.DataFrame) -> list[str]:
    header = ["Arm", "Role", "Planned", "Done", "OK", "Failed", "Incomplete",
              "Failure rate [95% Wilson]", "KM median epoch", "Survival at end"]
    rows = [[r["arm_label"], r["role"] or "-", r["n_planned"], r["n_done"], r["n_ok"],
             _failed_kinds(r), _incomplete_kinds(r),
             f"{fmt(r['failure_rate'])} {_interval(r['failure_rate_lo'], r['failure_rate_hi'])}",
             fmt(r["km_median_epoch"]) if math.isfinite(r["km_median_epoch"]) else "not reached",
             fmt(r["km_survival_final"])]
            for _, r in g.iterrows()]
    return _table(header, rows)


def _change_cells(r) -> list[str]:
    if not r["control_arm_id"]:
        return ["no control", "-"]
    if r["control_arm_id"] == r["arm_id"] and r["control_sweep"] == r["sweep"]:
        return ["(control)", "-"]
    return [_pct(r["rel_change"]), f"[{_pct(r['rel_change_lo'])}, {_pct(r['rel_change_hi'])}]"]


def loss_table(g: pd.DataFrame, metric: str) -> list[str]:
    header = ["Arm", "OK", f"median {metric}", "IQR [q25, q75]", "95% CI of median",
              "vs control", "95% CI"]
    rows = []
    for _, r in g.iterrows():
        if f"{metric}_median" not in r:
            continue
        iqr = f"{fmt(r[f'{metric}_iqr'])} {_interval(r[f'{metric}_q25'], r[f'{metric}_q75'])}"
        rows.append([r["arm_label"], r[f"{metric}_n"], fmt(r[f"{metric}_median"]), iqr,
                     _interval(r[f"{metric}_ci_lo"], r[f"{metric}_ci_hi"]),
                     *_change_cells(r)])
    return _table(header, rows)


def metrics_table(g: pd.DataFrame, metric_names: list[str]) -> list[str]:
    header = ["Arm", *metric_names]
    rows = [[r["arm_label"], *(f"{fmt(r[f'{m}_median'])} [{fmt(r[f'{m}_q25'])}, "
                               f"{fmt(r[f'{m}_q75'])}]" for m in metric_names)]
            for _, r in g.iterrows()]
    return _table(header, rows)


def decision_section(decision: Decision) -> list[str]:
    lines = [f"## Decision: **{decision.outcome.upper()}**", "",
             f"{decision.because[0].upper()}{decision.because[1:]}. "
             f"Meaning: {MEANING[decision.outcome]}.", ""]
    if decision.roles:
        lines += ["Roles: " + "; ".join(
            f"Stage {s}: " + ", ".join(f"{k} = {v}" for k, v in roles.items())
            for s, roles in decision.roles.items()), ""]
    if decision.verdicts:
        rows = [[f"Stage {v.stage}", v.subject, v.arm, c.criterion,
                 "pass" if c.passed else "FAIL", c.detail]
                for v in decision.verdicts for c in v.checks]
        title = "Checks" + (" (on the finished runs: provisional)" if decision.missing else "")
        lines += [f"### {title}", ""]
        lines += _table(["Stage", "Fix", "Arm", "Check", "Result", "Numbers"], rows) + [""]
    if decision.missing:
        lines += ["### Missing before the decision holds", ""]
        lines += [f"- {m}" for m in decision.missing] + [""]
    if decision.notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in decision.notes] + [""]
    return lines


def _header(runs: pd.DataFrame, sources: list[str], rule: DecisionRule) -> list[str]:
    cat = runs["category"].value_counts() if len(runs) else pd.Series(dtype=int)
    n_ok, n_fail = int(cat.get("ok", 0)), int(cat.get("failed", 0))
    n_inc = len(runs) - n_ok - n_fail
    inc = runs[~runs["category"].isin(["ok", "failed"])]["status"].value_counts()
    inc_text = ", ".join(f"{n} {s}" for s, n in sorted(inc.items()))
    status = f"**incomplete: {n_inc} unfinished ({inc_text})**" if n_inc else "complete"
    commits = sorted({str(c)[:10] for c in runs.get("git_commit", pd.Series(dtype=object))
                      .dropna() if c})
    names = sorted({str(v) for v in runs.get("val_loss_name", pd.Series(dtype=object))
                    .dropna() if v})
    return [
        f"# Study report: {' + '.join(sources)}", "",
        f"- Sources: {', '.join(f'`{s}`' for s in sources)}",
        f"- Runs: {len(runs)} planned, {n_ok + n_fail} done ({n_ok} ok, {n_fail} failed); "
        + status,
        f"- Decision metric: `{rule.metric}` (val loss: {', '.join(names) or 'n/a'}); "
        f"successful seeds needed per arm: {rule.min_successful_seeds}",
        f"- Git commits: {', '.join(commits) or 'unknown'}", "",
    ]


def render(runs: pd.DataFrame, summary: pd.DataFrame, decision: Decision,
           warnings: list[str], rule: DecisionRule, sources: list[str],
           metric_names: list[str], plots: list[str] | None = None,
           reps: int = stats.BOOTSTRAP_REPS, seed: int = stats.BOOTSTRAP_SEED) -> str:
    """The whole ``report.md`` text."""
    lines = _header(runs, sources, rule) + decision_section(decision)
    for stage in ("A", "B", ""):
        g = summary[summary["stage"] == stage] if len(summary) else summary
        if not len(g):
            continue
        lines += [f"## {STAGE_TITLE[stage]}", "", "### Stability", ""]
        lines += stability_table(g) + [""]
        if metric_names:
            lines += ["### Loss (ok runs; change vs the stage's control, bootstrap CI)", ""]
            lines += loss_table(g, rule.metric) + [""]
            lines += ["### Metrics: median [q25, q75] over ok runs", ""]
            lines += metrics_table(g, metric_names) + [""]
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in warnings] if warnings else ["None."]
    lines += [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += [
        "## Definitions", "",
        "- done = ok + failed; failure rate = failed / done (timeout, preempted, missing and "
        "corrupt runs are unfinished and not in the rate), 95% Wilson interval.",
        f"- Metrics are over ok runs only; median CI: percentile bootstrap, {reps} resamples, "
        f"seed {seed}; change vs control = median / control median - 1, bootstrap CI "
        "(unpaired).",
        "- Kaplan-Meier time to failure in epochs: failures are events at their epoch; ok, "
        "timeout, preempted and started runs are censored at their last epoch.",
        "- Stage: " + "; ".join(f"{k} = sweep name containing `{v.sweep_contains}`, else "
                                f"depth {v.depth}" for k, v in rule.stages.items())
        + ".",
        f"- Rule: >= {rule.min_successful_seeds} ok seeds per trusted median; arch fix: at most "
        f"{rule.arch_fix.max_nonfinite} nonfinite runs, compared with {rule.arch_fix.compare_with}"
        f", failure rate strictly below control: {rule.arch_fix.strictly_lower_failure_rate}; "
        f"opt fix: median regression <= {rule.opt_fix.max_median_loss_regression:.0%}, failure "
        f"rate strictly below control: {rule.opt_fix.strictly_lower_failure_rate}; "
        f"unfinished runs block the decision: {rule.require_complete}.",
        "",
    ]
    return "\n".join(lines)
