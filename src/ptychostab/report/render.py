"""The Markdown study report (``report.md``) of a study result
(:class:`~ptychostab.analysis.pipeline.StudyResult`).

Pure text: no timestamps and no absolute paths, so the same records give the same bytes
(the golden test relies on it). The figures are drawn beforehand
(:mod:`ptychostab.report.figures`) and only linked here; the caveats come with the result.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ptychostab.analysis import protocol
from ptychostab.analysis.caveats import STAGE_TITLE
from ptychostab.analysis.decide import MEANING, Decision, DecisionRule
from ptychostab.analysis.pipeline import StudyResult, default_out_dir
from ptychostab.report import tables
from ptychostab.report.clip_section import clip_section
from ptychostab.report.drift_section import drift_section
from ptychostab.report.figures import CLIP_SWEEP_PNG, Figures
from ptychostab.report.markdown import image, table
from ptychostab.report.rule_text import report_definitions

PROTOCOL_KEYS = (("data.N", "N"), ("data.size", "object px"), ("data.nimgs_train", "train images"),
                 ("data.nimgs_test", "test images"), ("data.nphotons", "photons"),
                 ("data.set_phi", "set_phi"), ("trainer.max_epochs", "epochs"),
                 ("trainer.batch_size", "batch"), ("trainer.lr", "lr"), ("depth", "depth"))


# --- first lines -----------------------------------------------------------------------------
def _stage_protocol(runs: pd.DataFrame, protocols: dict, stage: str) -> str:
    g = runs[runs["stage"] == stage]
    keys = {(str(a), str(b), str(c)) for a, b, c in
            g[["stage", "sweep", "arm_id"]].itertuples(index=False, name=None)}
    values: dict[str, set] = {}
    for key in keys:
        ap = protocol.as_arm_protocol(protocols.get(key))
        for proto in [p for _, p in ap.variants] or [ap.protocol or {}]:
            for k, _ in PROTOCOL_KEYS:
                if proto.get(k) is not None:
                    v = proto[k]
                    values.setdefault(k, set()).add(f"{v:g}" if isinstance(v, float) else str(v))
    parts = [f"{label} {'/'.join(sorted(values[k]))}" for k, label in PROTOCOL_KEYS
             if k in values]
    seeds = sorted({str(s) for s in g["seed"]}, key=lambda x: (len(x), x))
    arms = g["arm_label"].nunique()
    sweeps = ", ".join(f"`{s}`" for s in sorted(g["sweep"].unique()))
    return (f"- {STAGE_TITLE[stage]} ({sweeps}): {arms} arm(s), seeds {', '.join(seeds)}; "
            + (", ".join(parts) if parts else "protocol unknown (no readable manifest)"))


def _test_run(runs: pd.DataFrame, protocols: dict, rule: DecisionRule) -> list[str]:
    """The stages whose runs are the strategy's test runs (one train and one test image) where
    the stage declares more (a demonstration declaring 1/1 runs no test run)."""
    out = []
    for stage in ("A", "B"):
        declared = rule.stages[stage].protocol
        if declared.get("data.nimgs_train") == 1 and declared.get("data.nimgs_test") == 1:
            continue
        keys = {tuple(str(x) for x in k) for k in runs.loc[runs["stage"] == stage, [
            "stage", "sweep", "arm_id"]].itertuples(index=False, name=None)}
        protos = [protocol.as_arm_protocol(protocols.get(k)).protocol or {} for k in keys]
        if protos and all(p.get("data.nimgs_train") == 1 and p.get("data.nimgs_test") == 1
                          for p in protos):
            out.append(STAGE_TITLE[stage])
    return out


def first_lines(result: StudyResult) -> list[str]:
    """The report's first lines: what kind of reading this is, before any number."""
    rule, d, runs = result.rule, result.decision, result.runs
    lines = []
    if rule.demonstration:
        lines += ["> **DEMONSTRATION SCALE.** Tiny data, few epochs, a CPU: this report shows "
                  "the whole protocol at work; its outcome means nothing for the study. Rule "
                  f"file: `conf/decision/{rule.name}.yaml`.", ""]
    if rule.point:
        what = "of a demonstration " if rule.demonstration else ""
        lines += [f"> **POINT READING** {what}(`evidence: point`): every gate reads its estimate "
                  "alone, the strategy's literal reading (lower is lower, whatever the seeds); "
                  f"the one-sided {rule.evidence_level:.0%} bounds are shown, not used.", ""]
    tests = _test_run(runs, result.protocols, rule) if len(runs) else []
    if tests:
        lines += [f"> **TEST RUN** ({', '.join(tests)}: one train and one test image, the "
                  "strategy's test runs to validate stability before scaling): not the study's "
                  "protocol; its outcome is not the study's.", ""]
    if rule.allow_protocol_mismatch:
        used = "; ".join(d.mismatches + d.protocol_unknown) or "none found"
        lines += [f"> **Protocol mismatches allowed** by the rule switch "
                  f"`allow_protocol_mismatch: true` (mismatches: {used}).", ""]
    if not rule.robust_to_unsettled:
        lines += ["> **Robustness off** (`robust_to_unsettled: false`): unsettled runs are left "
                  "out of the outcome.", ""]
    if rule.compare_with != "control":
        lines += [f"> The arch fix is compared with `{rule.compare_with}` arms of each stage, "
                  "not only the control.", ""]
    if result.outside:
        lines += ["> Outside the study (`outside_study: true`; listed apart, in no stage, not in "
                  "the decision): " + ", ".join(f"`{s}`" for s in result.outside) + ".", ""]
    if result.staged_by_depth:
        lines += ["> Staged by depth (no stage name in the sweep's name): "
                  + "; ".join(result.staged_by_depth) + ".", ""]
    return lines


def _header(result: StudyResult) -> list[str]:
    runs, sources, rule, protocols = (result.runs, result.sources, result.rule,
                                      result.protocols)
    lines = [f"# Study report: {' + '.join(sources)}", ""] + first_lines(result)
    stages = [s for s in ("A", "B", "clip", "outside", "") if len(runs)
              and (runs["stage"] == s).any()]
    lines += ["Protocol:", ""] + [_stage_protocol(runs, protocols, s) for s in stages]
    if not stages:
        lines.append("- no runs found")
    fam = runs["category"].value_counts() if len(runs) else pd.Series(dtype=int)
    commits = sorted({str(c)[:10] for c in runs.get("git_commit", pd.Series(dtype=object))
                      .dropna() if c})
    reading = ("point estimates (`evidence: point`)" if rule.point else
               f"one-sided {rule.evidence_level:.0%} bounds (`evidence: interval`)")
    lines += [
        "", f"- Sources: {', '.join(f'`{s}`' for s in sources)}; rule file "
        f"`conf/decision/{rule.name}.yaml`",
        f"- Runs: {len(runs)} planned: " + ", ".join(
            f"{int(fam.get(f, 0))} {f}" for f in ("ok", "instability", "other final",
                                                  "not final")),
        f"- Decision metric: `{rule.metric}`; SSIMs: "
        + ", ".join(f"`{m}`" for m in rule.ssim_metrics)
        + f"; trusted median: >= {rule.min_successful_seeds} finite values; gates read "
        + reading + f"; smallest effects that matter: failure rate "
        f"{rule.min_effect.failure_rate:.0%}, loss {rule.min_effect.loss:.0%}",
        f"- Git commits: {', '.join(commits) or 'unknown'}", ""]
    return lines


# --- the decision ----------------------------------------------------------------------------
def _gate_rows(d: Decision) -> list[list[str]]:
    rows = []
    for g in d.gates:
        reason = g.reason + (f"; {g.settle}" if g.settle else "")
        rows.append([f"Stage {g.stage}", g.subject, g.name, g.against or "-", g.interval_text(),
                     f"**{g.verdict}**", g.point or "-", g.numbers, reason])
    return rows


MAX_CASES = 27  # robustness cases listed one by one; more: summarised by outcome


def robustness_table(cases: list[tuple[str, str]]) -> list[str]:
    """Every case when they are few; else one row per outcome with its count and a case."""
    if len(cases) <= MAX_CASES:
        return table(["Unsettled runs counted as", "Outcome"], cases)
    rows = []
    for outcome in dict.fromkeys(o for _, o in cases):
        hits = [c for c, o in cases if o == outcome]
        rows.append([outcome, len(hits), hits[0]])
    return table(["Outcome", "Cases", "For example"], rows)


def decision_section(decision: Decision) -> list[str]:
    d = decision
    lines = [f"## Decision: **{d.outcome}**", "",
             f"{d.because[0].upper()}{d.because[1:]}. Meaning: {MEANING[d.outcome]}.", ""]
    if d.provisional:
        lines += [f"Provisional outcome ({d.provisional_basis}): **{d.provisional}**.", ""]
    if d.premise:
        lines += [f"Premise: **{d.premise}**: {d.premise_text}.", ""]
    if d.to_run:
        lines += ["### What to run to settle it", ""] + [f"- {m}" for m in d.to_run] + [""]
    if d.roles:
        lines += ["Roles: " + "; ".join(f"Stage {s}: " + ", ".join(
            f"{k} = {v}" for k, v in r.items()) for s, r in d.roles.items()), ""]
    if d.fixes:
        lines += [f"- GOLD (arch fix): **{v[0]}**: {v[1]}" if k == "arch_fix" else
                  f"- SILVER (opt fix): **{v[0]}**: {v[1]}" for k, v in d.fixes.items()]
        lines += [f"- Outcome-table inputs: {', '.join(d.inputs)}", ""]
    if d.other_fix:
        lines += ["### The other fix", ""] + [f"- {m}" for m in d.other_fix] + [""]
    if d.gates:
        level = f"{d.level:.0%}"
        lines += ["### Gates", "",
                  f"Estimate: the improvement (superiority gates: `rate_control - rate_fix`, "
                  f"`1 - median_fix / median_ref`) or the regression (non-inferiority gates), "
                  f"with its one-sided {level} bounds; limit gates (nonfinite runs, grad norm) "
                  "are counts and medians.", ""]
        lines += table(["Stage", "Fix", "Gate", "Against", "Estimate [bounds]", "Verdict",
                        "Point reading", "Numbers", "Reason"], _gate_rows(d)) + [""]
    if d.mismatches or d.protocol_unknown:
        lines += ["### Protocol", ""] + [f"- {m}" for m in d.mismatches + d.protocol_unknown]
        lines += [""]
    if d.conflicts:
        lines += ["### Records found twice with different results", ""]
        lines += [f"- {c}" for c in d.conflicts] + [""]
    if len({o for _, o in d.cases}) > 1:
        lines += ["### Robustness (the ways of counting the unsettled runs)", ""]
        lines += robustness_table(d.cases) + [""]
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


def render(result: StudyResult, out_dir: str | Path | None = None,
           figures: Figures | None = None) -> str:
    """The whole ``report.md`` text: run folders and figures linked relative to ``out_dir``
    (default: where :func:`ptychostab.analysis.pipeline.default_out_dir` puts the report);
    ``figures``: those drawn for it (None: none)."""
    out = Path(out_dir) if out_dir else default_out_dir(result.sweep_dirs)
    figures = figures or Figures()
    runs, summary, rule = result.runs, result.summary, result.rule
    plots = [p.relative_to(out).as_posix() for p in figures.study]
    lines = _header(result) + decision_section(result.decision)
    for stage in ("A", "B", "outside", ""):
        g = summary[summary["stage"] == stage] if len(summary) else summary
        if len(g):
            lines += stage_section(runs, g, stage, rule, result.metric_names, out)
    lines += tables.pack_section(runs)  # only when some run was packed
    lines += drift_section(result.drift, figures.drift, report_dir=out)
    clip_plot = next((p for p in plots if p.endswith(CLIP_SWEEP_PNG)), None)
    lines += clip_section(result.clip, rule, clip_plot)
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in result.warnings] if result.warnings else ["None."]
    lines += [""]
    others = [p for p in plots if p != clip_plot]
    if others or figures.notes:
        lines += ["## Plots", ""] + [image(p, p) for p in others]
        lines += [f"- skipped: {n}" for n in figures.notes] + [""]
    lines += report_definitions(rule, result.reps, result.seed)
    return "\n".join(lines)
