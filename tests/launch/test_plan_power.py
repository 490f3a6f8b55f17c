"""The dry run tells the power of a study before it runs (issue 19): what the decision's gates
can settle at the sweep's seeds per arm."""

from __future__ import annotations

from ptychostab.analysis import power
from ptychostab.analysis.rule import load_rule
from ptychostab.cli.plan import build_plan
from ptychostab.launch import plan as planmod


def test_dry_run_states_the_power_at_its_seed_count(tmp_path):
    plan = build_plan(["arm=control,arch_fix", "seed=range(10)", "data=tiny",
                       f"paths.output_root={tmp_path}"], describe=False)
    text = planmod.format_plan(plan)
    rule = load_rule()
    want = power.study_power(10, rule.evidence_level, rule.premise_failure_rate,
                             rule.min_effect.failure_rate, rule.min_effect.loss).lines()
    assert "decision rule conf/decision/default.yaml, 10 seeds per arm" in text
    assert "\n".join(want) in text
    assert "even 0/10 against a control at 3/10 stays inconclusive" in text


def test_no_power_statement_outside_the_study(tmp_path):
    plan = build_plan(["seed=range(2)", "data=tiny", "outside_study=true",
                       f"paths.output_root={tmp_path}"], describe=False)
    assert "seeds per arm" not in planmod.format_plan(plan)
