"""The rule in words, rendered from the rule itself: the report's Definitions section and the
"Decision rule" section of ``experiments/README.md`` (tests/report/test_definitions.py keeps the
README equal to :func:`readme_section` of ``conf/decision/default.yaml``), so the three cannot
drift. ``python -m ptychostab.cli.aggregate --print-rule`` prints the README section.
"""

from __future__ import annotations

from ptychostab.analysis import power, stats
from ptychostab.analysis.decide import MEANING, OUTCOME_TABLE, OUTCOMES, TABLE_HEADER
from ptychostab.analysis.rule import STAGES, DecisionRule
from ptychostab.analysis.summary import NOT_FINAL
from ptychostab.report.markdown import table
from ptychostab.runs import records

README_BEGIN = ("<!-- decision-rule:begin (generated: python -m ptychostab.cli.aggregate "
                "--print-rule; do not edit by hand) -->")
README_END = "<!-- decision-rule:end -->"
POWER_BEGIN = ("<!-- power:begin (generated: ptychostab.report.rule_text.power_section; do not "
               "edit by hand) -->")
POWER_END = "<!-- power:end -->"


def outcome_table() -> list[str]:
    """:data:`~ptychostab.analysis.decide.OUTCOME_TABLE` as markdown: first matching row wins."""
    last = len(TABLE_HEADER) - 1
    return table(TABLE_HEADER, [[f"**{c}**" if i == last else c for i, c in enumerate(row)]
                                for row in OUTCOME_TABLE])


def families() -> str:
    inst = ", ".join(records.INSTABILITY_KINDS)
    other = ", ".join(records.OTHER_FINAL_KINDS)
    nf = ", ".join(NOT_FINAL)
    return (f"Only instability ({inst}) is a failure: failure rate = instability / (ok + "
            f"instability), 95% Wilson interval. Other final endings ({other}), not final "
            f"ones ({nf}) and ok runs with a non-finite loss or SSIM are *unsettled*: listed "
            "beside the rate, never inside it.")


def _pct(x: float) -> str:
    return f"{x:.0%}" if abs(100 * x - round(100 * x)) < 1e-9 else f"{x:.1%}"


def _nonfinite(limit: int | None) -> str:
    return "not checked" if limit is None else f"at most {limit}"


def protocol_keys(rule: DecisionRule) -> str:
    """The declared protocol of the stages, in words (``depth 4 / 8; data.N 64; ...``)."""
    a, b = (rule.stages[s] for s in STAGES)
    keys = list(dict.fromkeys([*a.protocol, *b.protocol]))
    parts = [f"depth {a.depth} / {b.depth}"]
    for k in keys:
        va, vb = a.protocol.get(k, "-"), b.protocol.get(k, "-")
        parts.append(f"{k} {fmt_value(va)}" + ("" if va == vb else f" / {fmt_value(vb)}"))
    return "; ".join(parts)


def fmt_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def gate_lines(rule: DecisionRule) -> list[str]:
    """The rule's gates and inputs in words, from its values."""
    m, tol, lvl = rule.min_successful_seeds, rule.stage_b_tolerance, rule.evidence_level
    reg, me = rule.opt_fix.max_median_loss_regression, rule.min_effect
    ssim = ", ".join(f"`{s}`" for s in rule.ssim_metrics)
    sb = rule.stage_b
    seeds = power.premise_absent_seeds(rule.premise_failure_rate, lvl)
    up10, up5 = (stats.wilson_bounds(0, n, lvl)[1] for n in (10, 5))
    reading = (
        f"- **Point reading** (`evidence: point`): every gate reads its estimate alone (the "
        "strategy's literal reading: lower is lower); the one-sided bounds at "
        f"{lvl:.0%} are shown, not used, and nothing is inconclusive."
        if rule.point else
        f"- **Evidence** (`evidence: interval`): each comparison gate states its estimate and "
        f"one-sided bounds at {lvl:.0%} (`evidence_level`) and is judged on the bounds; its "
        "point verdict (the estimate alone) gives the provisional outcome.")
    return [
        "- Gates return pass, fail, inconclusive (data, not enough: the interval spans the "
        "decision) or untestable (no data); only pass is a pass.",
        reading,
        "- Methods: one failure rate: Wilson score bounds; a difference of two: Newcombe's "
        "hybrid score interval with continuity correction (Newcombe 1998, method 11: "
        "conservative at a few seeds); a ratio of medians: percentile-bootstrap bounds "
        f"({stats.BOOTSTRAP_REPS} resamples of each arm, independent, seeds "
        f"{stats.BOOTSTRAP_SEED} and {stats.BOOTSTRAP_SEED + 1}).",
        "- **superiority** (failure rate or median loss below the control's): improvement = "
        "`rate_control - rate_fix` (absolute) or `1 - median_fix / median_control` "
        "(relative); pass if its low bound > 0, else fail if its high bound < `min_effect` "
        f"(failure rate {_pct(me.failure_rate)}, loss {_pct(me.loss)}: the smallest "
        "improvements the study cares about), else inconclusive.",
        "- **non-inferiority** (a loss or SSIM at most so much worse): regression = "
        "`median_fix / median_ref - 1` (an SSIM: `1 - median_fix / median_ref`); pass if its "
        "high bound is within the allowed, fail if its low bound is beyond it, else "
        "inconclusive.",
        f"- A median of `{rule.metric}` or an SSIM is trusted with at least {m} finite values "
        "(fewer: untestable, with the seeds still needed); a reference with no ok run among at "
        f"least {m} finished runs is beaten by any trusted fix. An ok run with a non-finite "
        "loss or SSIM is unsettled and counts as nonfinite in the nonfinite limits.",
        f"- **premise** (strategy: \"e.g., 3/10 runs explode\"): *shown absent* when the "
        f"control's one-sided Wilson upper bound of its failure rate is below "
        f"{_pct(rule.premise_failure_rate)} (`premise_failure_rate`) in both stages (0/10: "
        f"{up10:.2f}; 0/5: {up5:.2f}) -> NOT REPRODUCED; *present* when the control failed "
        f"somewhere and is not shown absent -> the gates decide; else *not settled* "
        f"({seeds} failure-free control runs per stage would show it absent).",
        f"- **GOLD gates** (arch fix): Stage A median `{rule.metric}` below the control's "
        f"(superiority); {_nonfinite(rule.arch_fix.max_nonfinite)} nonfinite runs in Stage A; "
        "failure rate below the control's in both stages (superiority); Stage B's conditions.",
        f"- **SILVER gates** (opt fix), in each stage: failure rate below the control's "
        f"(superiority); median `{rule.metric}` at most {_pct(reg)} above the control's "
        f"(non-inferiority); nonfinite runs in Stage A: {_nonfinite(rule.opt_fix.max_nonfinite)}"
        "; Stage B's conditions.",
        f"- **Stage B's conditions**, both fixes (strategy section 2: no NaNs, grad_norm "
        f"bounded, matches or beats Stage A): {_nonfinite(sb.max_nonfinite)} nonfinite runs "
        "(`stage_b.max_nonfinite`); grad norm bounded, a point gate on ok runs: each run's max "
        "pre-clip grad norm at most `failure.grad_norm_bound` and the median of those maxima "
        f"at most {sb.grad_norm_factor:g}x (`stage_b.grad_norm_factor`) the same arm's Stage A "
        "median (an order of magnitude: growth the study calls an explosion, not depth's "
        f"ordinary rise); the deep median `{rule.metric}` at most {_pct(tol)} above the same "
        f"arm's Stage A median and each deep median SSIM ({ssim}) at most {_pct(tol)} below "
        "(non-inferiority, `stage_b_tolerance`). A fix failing Stage B does not win.",
        "- A fix's gates combine: any fail -> fail; else any untestable -> untestable; else any "
        "inconclusive -> inconclusive; else pass.",
        f"- Compared with: {rule.compare_with} (`compare_with`; `all`: the arch fix must beat "
        "every arm of the stage; each gate names the arm it compared against).",
        "- **protocol**: each stage's runs follow the stage's declared protocol (the rule "
        f"file's `stages`: {protocol_keys(rule)}) and Stage B is deeper than Stage A; compared "
        "arms share every setting of the arm identity (manifest config, run-only keys removed) "
        "but arch.name, clip.algorithm, clip.value and the seed, and each role arm across "
        "stages all but depth; every seed of an arm runs under one protocol. A mismatch -> "
        "INCOMPLETE, naming the keys; a run with records but no manifest: untestable -> "
        "INCOMPLETE" + (
            " (all allowed by this rule's `allow_protocol_mismatch`: the report says so)."
            if rule.allow_protocol_mismatch else
            " (a demonstration rule notes departures from the declared protocol without "
            "binding)." if rule.demonstration else "."),
        "- **records**: the same arm id and seed found twice (two folders, a copied sweep) "
        "counts once when both results agree; when they differ -> INCOMPLETE.",
        "- Robustness: " + (
            "the outcome is evaluated with each role arm-stage's unsettled runs all counted as "
            "instability failures, or all as successes at the arm's worst observed values, or "
            "at its best (at most 3^6 cases); several outcomes -> INCOMPLETE, listing the runs "
            "to rerun or retry." if rule.robust_to_unsettled else
            "**off** (`robust_to_unsettled: false`): unsettled runs are left out."),
        "- An INCOMPLETE outcome states its provisional outcome (the table with the stages, "
        "records and protocol taken as in order and unsettled runs left out; when that is "
        "still open, the point-estimate reading) and what to run: for each inconclusive gate "
        f"about how many seeds per arm would settle it at the observed effect ("
        f"{power.POWER:.0%} power; failure rates exactly, from the binomial; medians by a "
        "normal approximation of their bounds: estimates).",
        "- The clip sweep (sweep name containing "
        f"`{rule.clip_sweep.sweep_contains}`) and sweeps declared outside the study "
        "(config `outside_study: true`) are in no stage and not in the outcome.",
    ]


def outcome_lines() -> list[str]:
    return [f"- **{o}**: {MEANING[o]}." for o in OUTCOMES]


def readme_section(rule: DecisionRule) -> str:
    """The README's "Decision rule" body (between :data:`README_BEGIN` and
    :data:`README_END`)."""
    lines = [README_BEGIN, "", f"Rule file: `conf/decision/{rule.name}.yaml`. {families()}",
             "", *gate_lines(rule), "", "Outcome (first matching row):", "",
             *outcome_table(), "", *outcome_lines(), "", README_END]
    return "\n".join(lines)


def power_section(rule: DecisionRule, seeds: int) -> str:
    """The README's power statement for ``seeds`` seeds per arm (between
    :data:`POWER_BEGIN` and :data:`POWER_END`)."""
    p = power.study_power(seeds, rule.evidence_level, rule.premise_failure_rate,
                          rule.min_effect.failure_rate, rule.min_effect.loss)
    return "\n".join([POWER_BEGIN, "", *p.lines(), "", POWER_END])


def report_definitions(rule: DecisionRule, reps: int, seed: int) -> list[str]:
    """The report's Definitions section."""
    stages = "; ".join(f"{k} = sweep name containing `{v.sweep_contains}`, else (a sweep no "
                       f"stage name matches, inside the study) depth {v.depth}"
                       for k, v in rule.stages.items())
    return ["## Definitions", "", f"Rule file: `conf/decision/{rule.name}.yaml`.", "",
            f"- {families()}",
            f"- Metrics over ok runs' finite values: median [q25, q75]; the median's interval is "
            f"the distribution-free order-statistic interval [x_(k), x_(n+1-k)] with its actual "
            f"binomial coverage (>= {rule.median_ci_level:.0%}), or `n/a` when the values are too "
            f"few for that level; change vs control = median / control median - 1 with a "
            f"percentile-bootstrap interval ({reps} resamples, seed {seed}, unpaired).",
            "- Kaplan-Meier time to failure (epochs and seconds): instability failures are "
            "events; every other run is censored at its last epoch.",
            f"- Stage: {stages}.", *gate_lines(rule), "", "Outcome (first matching row):", "",
            *outcome_table(), "", *outcome_lines(), ""]
