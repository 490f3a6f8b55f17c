"""Markdown study report and its warnings, from the runs and summary tables.

Pure text: no timestamps and no absolute paths, so the same records give the same bytes
(the golden test relies on it).
"""

from __future__ import annotations

import pandas as pd

from ptychostab.analysis import clipsweep, stats
from ptychostab.analysis.decide import MEANING, Decision, DecisionRule
from ptychostab.report import tables
from ptychostab.report.rule_text import report_definitions, table
from ptychostab.runs import records

MAX_LISTED = 20  # runs named one by one in a warning before "... and k more"
STAGE_TITLE = {"A": "Stage A", "B": "Stage B", "clip": "Clip sweep", "": "Unstaged arms"}
PROTOCOL_KEYS = (("data.N", "N"), ("data.size", "object px"), ("data.nimgs_train", "train images"),
                 ("data.nimgs_test", "test images"), ("data.nphotons", "photons"),
                 ("data.set_phi", "set_phi"), ("trainer.max_epochs", "epochs"),
                 ("trainer.batch_size", "batch"), ("trainer.lr", "lr"), ("depth", "depth"))


# --- warnings --------------------------------------------------------------------------------
def _listing(items: list[str]) -> str:
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


# --- first lines -----------------------------------------------------------------------------
def _stage_protocol(runs: pd.DataFrame, protocols: dict, stage: str) -> str:
    g = runs[runs["stage"] == stage]
    keys = {(str(a), str(b), str(c)) for a, b, c in
            g[["stage", "sweep", "arm_id"]].itertuples(index=False, name=None)}
    values: dict[str, set] = {}
    for key in keys:
        for k, _ in PROTOCOL_KEYS:
            if (protocols.get(key) or {}).get(k) is not None:
                values.setdefault(k, set()).add(str(protocols[key][k]))
    parts = [f"{label} {'/'.join(sorted(values[k]))}" for k, label in PROTOCOL_KEYS
             if k in values]
    seeds = sorted({str(s) for s in g["seed"]}, key=lambda x: (len(x), x))
    arms = g["arm_label"].nunique()
    sweeps = ", ".join(f"`{s}`" for s in sorted(g["sweep"].unique()))
    return (f"- {STAGE_TITLE[stage]} ({sweeps}): {arms} arm(s), seeds {', '.join(seeds)}; "
            + (", ".join(parts) if parts else "protocol unknown (no readable manifest)"))


def _header(runs: pd.DataFrame, sources: list[str], rule: DecisionRule, decision: Decision,
            protocols: dict) -> list[str]:
    lines = [f"# Study report: {' + '.join(sources)}", ""]
    if rule.demonstration:
        lines += ["> **DEMONSTRATION SCALE.** Tiny data, few epochs, a CPU: this report shows "
                  "the whole protocol at work; its outcome means nothing for the study. Rule "
                  f"file: `conf/decision/{rule.name}.yaml`.", ""]
    if rule.allow_protocol_mismatch:
        used = "; ".join(decision.mismatches) or "none found"
        lines += [f"> **Protocol mismatches allowed** by the rule switch "
                  f"`allow_protocol_mismatch: true` (mismatches: {used}).", ""]
    if not rule.robust_to_unsettled:
        lines += ["> **Robustness off** (`robust_to_unsettled: false`): unsettled runs are left "
                  "out of the outcome.", ""]
    if rule.compare_with != "control":
        lines += [f"> The arch fix is compared with `{rule.compare_with}` arms of each stage, "
                  "not only the control.", ""]
    stages = [s for s in ("A", "B", "clip", "") if len(runs) and (runs["stage"] == s).any()]
    lines += ["Protocol:", ""] + [_stage_protocol(runs, protocols, s) for s in stages]
    if not stages:
        lines.append("- no runs found")
    fam = runs["category"].value_counts() if len(runs) else pd.Series(dtype=int)
    commits = sorted({str(c)[:10] for c in runs.get("git_commit", pd.Series(dtype=object))
                      .dropna() if c})
    lines += [
        "", f"- Sources: {', '.join(f'`{s}`' for s in sources)}; rule file "
        f"`conf/decision/{rule.name}.yaml`",
        f"- Runs: {len(runs)} planned: " + ", ".join(
            f"{int(fam.get(f, 0))} {f}" for f in ("ok", "instability", "other final",
                                                  "not final")),
        f"- Decision metric: `{rule.metric}`; trusted median: >= {rule.min_successful_seeds} "
        "finite values",
        f"- Git commits: {', '.join(commits) or 'unknown'}", ""]
    return lines


# --- the decision ----------------------------------------------------------------------------
def decision_section(decision: Decision) -> list[str]:
    d = decision
    lines = [f"## Decision: **{d.outcome}**", "",
             f"{d.because[0].upper()}{d.because[1:]}. Meaning: {MEANING[d.outcome]}.", ""]
    if d.provisional:
        lines += [f"Provisional outcome (what the finished runs still allow; unsettled runs left "
                  f"out): **{d.provisional}**.", ""]
    if d.to_run:
        lines += ["### What to run to settle it", ""] + [f"- {m}" for m in d.to_run] + [""]
    if d.roles:
        lines += ["Roles: " + "; ".join(f"Stage {s}: " + ", ".join(
            f"{k} = {v}" for k, v in r.items()) for s, r in d.roles.items()), ""]
    if d.fixes:
        lines += [f"- GOLD (arch fix): **{v[0]}**: {v[1]}" if k == "arch_fix" else
                  f"- SILVER (opt fix): **{v[0]}**: {v[1]}" for k, v in d.fixes.items()]
        lines += [f"- Outcome-table inputs: {', '.join(d.inputs)}", ""]
    if d.gates:
        rows = [[f"Stage {g.stage}", g.subject, g.name, g.verdict, g.numbers, g.reason]
                for g in d.gates]
        lines += ["### Gates", ""]
        lines += table(["Stage", "Fix", "Gate", "Verdict", "Numbers", "Reason"], rows) + [""]
    if d.mismatches:
        lines += ["### Protocol mismatches", ""] + [f"- {m}" for m in d.mismatches] + [""]
    if len(d.cases) > 1:
        lines += ["### Robustness (every extreme assignment of the unsettled runs)", ""]
        lines += table(["Unsettled runs counted as", "Outcome"], d.cases) + [""]
    if d.notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in d.notes] + [""]
    return lines


def stage_section(runs: pd.DataFrame, g: pd.DataFrame, stage: str, rule: DecisionRule,
                  metric_names: list[str], out_dir) -> list[str]:
    lines = [f"## {STAGE_TITLE[stage]}", "", "### Stability", ""]
    lines += tables.stability_table(g) + [""]
    if metric_names:
        lines += ["### Loss (ok runs' finite values; change vs the stage's control)", ""]
        lines += tables.loss_table(g, rule.metric, rule.median_ci_level) + [""]
        lines += ["### Metrics: median [q25, q75] over ok runs", ""]
        lines += tables.metrics_table(g, metric_names) + [""]
    r = runs[runs["stage"] == stage]
    if len(r):
        lines += ["### Per-seed evidence (failed runs first)", ""]
        lines += tables.evidence_table(r, out_dir) + [""]
    return lines


def render(runs: pd.DataFrame, summary: pd.DataFrame, decision: Decision,
           warnings: list[str], rule: DecisionRule, sources: list[str],
           metric_names: list[str], plots: list[str] | None = None,
           reps: int = stats.BOOTSTRAP_REPS, seed: int = stats.BOOTSTRAP_SEED,
           out_dir=None, protocols: dict | None = None,
           plot_notes: list[str] | None = None,
           drift_lines: list[str] | None = None) -> str:
    """The whole ``report.md`` text (run folders relative to ``out_dir``); ``drift_lines``:
    the activation-drift section (:func:`ptychostab.analysis.activation_drift.drift_section`)."""
    protocols = protocols or {}
    plots = list(plots or [])
    lines = _header(runs, sources, rule, decision, protocols) + decision_section(decision)
    for stage in ("A", "B", ""):
        g = summary[summary["stage"] == stage] if len(summary) else summary
        if len(g):
            lines += stage_section(runs, g, stage, rule, metric_names, out_dir)
    lines += tables.pack_section(runs)  # only when some run was packed
    lines += list(drift_lines or [])
    clip_plot = next((p for p in plots if p.endswith("clip_sweep.png")), None)
    lines += clipsweep.clip_section(runs, summary, rule, protocols, clip_plot)
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in warnings] if warnings else ["None."]
    lines += [""]
    others = [p for p in plots if p != clip_plot]
    if others or plot_notes:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in others]
        lines += [f"- skipped: {n}" for n in plot_notes or []] + [""]
    lines += report_definitions(rule, reps, seed)
    return "\n".join(lines)
