"""The rule in words, rendered from the rule itself: the report's Definitions section and the
"Decision rule" section of ``experiments/README.md`` (tests/sweep/test_definitions.py keeps the
README equal to :func:`readme_section` of ``conf/decision/default.yaml``), so the three cannot
drift. ``python -m ptychostab.cli.aggregate --print-rule`` prints the README section.
"""

from __future__ import annotations

from ptychostab.analysis.decide import MEANING, OUTCOME_TABLE, OUTCOMES, TABLE_HEADER
from ptychostab.analysis.rule import DecisionRule
from ptychostab.runs import records

README_BEGIN = ("<!-- decision-rule:begin (generated: python -m ptychostab.cli.aggregate "
                "--print-rule; do not edit by hand) -->")
README_END = "<!-- decision-rule:end -->"


def table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"
                    for r in rows]


def outcome_table() -> list[str]:
    """:data:`~ptychostab.analysis.decide.OUTCOME_TABLE` as markdown: first matching row wins."""
    return table(TABLE_HEADER, [[f"**{c}**" if i == 5 else c for i, c in enumerate(row)]
                                for row in OUTCOME_TABLE])


def families() -> str:
    inst = ", ".join(records.INSTABILITY_KINDS)
    other = ", ".join(records.OTHER_FINAL_KINDS)
    nf = ", ".join((*records.INCOMPLETE_KINDS, *records.READ_PROBLEMS))
    return (f"Only instability ({inst}) is a failure: failure rate = instability / (ok + "
            f"instability), 95% Wilson interval. Other final endings ({other}) and not final "
            f"ones ({nf}) are *unsettled*: listed beside the rate, never inside it.")


def gate_lines(rule: DecisionRule) -> list[str]:
    m, tol = rule.min_successful_seeds, rule.stage_b_tolerance
    reg = rule.opt_fix.max_median_loss_regression
    nf = rule.opt_fix.max_nonfinite
    return [
        "- Gates return pass, fail, neutral or untestable (untestable is never a pass).",
        "- **failure rate** (a fix against the control, per stage): pass if below the "
        "control's; fail if above, or equal while the control fails; neutral if neither has an "
        "instability failure; untestable without a finished run.",
        f"- A median of `{rule.metric}` / `{rule.ssim_metric}` is trusted with at least {m} "
        "finite values (ok runs with a NaN metric do not count). A control with no ok run among "
        f"at least {m} finished runs is beaten by any trusted fix; too few values: untestable, "
        "with an estimate of the seeds still needed.",
        f"- **GOLD gates** (arch fix): Stage A median `{rule.metric}` below the control's; at "
        f"most {rule.arch_fix.max_nonfinite} nonfinite runs in each stage; Stage B median "
        f"`{rule.metric}` at most {tol:.0%} above its own Stage A median and median "
        f"`{rule.ssim_metric}` at most {tol:.0%} below; failure-rate gates in both stages.",
        f"- **SILVER gates** (opt fix), in each stage: failure rate; median `{rule.metric}` at "
        f"most {reg:.0%} above the control's (ok runs)"
        + ("" if nf is None else f"; at most {nf} nonfinite runs") + ".",
        "- A fix's gates combine: any fail -> fail; else any untestable -> untestable; else "
        "pass (neutral gates skipped), which needs at least one failure-rate pass.",
        f"- Compared with: {rule.compare_with} (`compare_with`; `all`: the arch fix must beat "
        "every arm of the stage).",
        "- Compared arms share every setting of the arm identity (manifest config, run-only "
        "keys removed) but arch.name, clip.algorithm, clip.value and the seed; across stages "
        "all but depth. A mismatch -> INCOMPLETE"
        + (" (allowed by this rule's `allow_protocol_mismatch`)."
           if rule.allow_protocol_mismatch else "."),
        "- Robustness: " + ("the outcome is evaluated with each role arm-stage's unsettled runs "
                            "all counted as instability failures or all as successes (at most "
                            "2^6 cases); several outcomes -> INCOMPLETE, listing the runs to "
                            "rerun or retry." if rule.robust_to_unsettled else
                            "**off** (`robust_to_unsettled: false`): unsettled runs are left "
                            "out."),
        "- The clip sweep (sweep name containing "
        f"`{rule.clip_sweep.sweep_contains}`) is in no stage and not in the outcome.",
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


def report_definitions(rule: DecisionRule, reps: int, seed: int) -> list[str]:
    """The report's Definitions section."""
    stages = "; ".join(f"{k} = sweep name containing `{v.sweep_contains}`, else depth {v.depth}"
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
