"""The decision rule: loading, stages, roles, and a table of outcomes."""

import copy

import pytest
import yaml

from ptychostab.sweep import decide as dec

RULE = dec.load_rule()
FIELDS = {"control": {"arch": "hybrid", "clip": "none"},
          "arch_fix": {"arch": "stable_hybrid", "clip": "none"},
          "opt_fix": {"arch": "hybrid", "clip": "agc", "clip_value": 0.01}}


def arm(role, stage, ok, failed, loss, nonfinite=0, unfinished=0):
    """A summary row: ``ok`` successes, ``failed`` failures (``nonfinite`` of them NaN)."""
    label = f"{role}{'' if stage == 'A' else '-deep'}"
    return {"stage": stage, "sweep": f"stage_{stage.lower()}", "arm_id": label,
            "arm_label": label, **FIELDS[role], "depth": 4 if stage == "A" else 8,
            "n_planned": ok + failed + unfinished, "n_done": ok + failed, "n_ok": ok,
            "n_failed": failed, "n_nonfinite": nonfinite, "n_diverged": failed - nonfinite,
            "n_missing": unfinished, "n_timeout": 0, "n_preempted": 0, "n_corrupt": 0,
            "best_val_loss_median": loss}


def stage_a(control=(7, 3, 0.020), arch=(10, 0, 0.015), opt=(9, 1, 0.021), **kw):
    return [arm("control", "A", *control), arm("arch_fix", "A", *arch, **kw.get("arch_kw", {})),
            arm("opt_fix", "A", *opt)]


def stage_b(control=(6, 4, 0.030), arch=(10, 0, 0.025), opt=(8, 2, 0.031)):
    return [arm("control", "B", *control), arm("arch_fix", "B", *arch), arm("opt_fix", "B", *opt)]


CASES = {
    # name: (rows, expected outcome)
    "gold": (stage_a() + stage_b(), "gold"),
    "gold needs no opt fix in B": (stage_a() + stage_b()[:2], "gold"),
    "silver: arch fix loses on loss": (stage_a(arch=(10, 0, 0.025)) + stage_b(), "silver"),
    "silver: arch fix has a NaN run": (
        stage_a(arch=(9, 1, 0.015), arch_kw={"nonfinite": 1}) + stage_b(), "silver"),
    "silver: arch fix fails B": (stage_a() + stage_b(arch=(5, 5, 0.02)), "silver"),
    "silver: loss regression exactly 10%": (stage_a(arch=(10, 0, 0.05), opt=(9, 1, 0.022))
                                            + stage_b(opt=(8, 2, 0.033)), "silver"),
    "pivot: opt fix regresses 11%": (stage_a(arch=(10, 0, 0.05), opt=(9, 1, 0.0222))
                                     + stage_b(), "pivot"),
    "pivot: both fail B": (stage_a() + stage_b(arch=(5, 5, 0.02), opt=(4, 6, 0.03)), "pivot"),
    "pivot: arch fails A, opt fails B": (stage_a(arch=(3, 7, 0.01))
                                         + stage_b(opt=(5, 5, 0.03)), "pivot"),
    "pivot: both fail A, no Stage B needed": (
        stage_a(arch=(7, 3, 0.03), opt=(7, 3, 0.02)), "pivot"),
    "incomplete: Stage A only": (stage_a(), "incomplete"),
    "incomplete: no Stage A": (stage_b(), "incomplete"),
}


@pytest.mark.parametrize("name", CASES)
def test_outcome_table(name):
    rows, expected = CASES[name]
    d = dec.decide(copy.deepcopy(rows), RULE)
    assert d.outcome == expected, (d.because, [(v.stage, v.subject, v.checks)
                                                for v in d.verdicts], d.missing)
    assert (d.missing != []) == (expected == "incomplete")


def test_gold_states_its_numbers():
    d = dec.decide(stage_a() + stage_b(), RULE)
    checks = {(v.stage, v.subject, c.criterion): c for v in d.verdicts for c in v.checks}
    loss = checks[("A", "arch_fix", "lowest median best_val_loss")]
    assert loss.passed and loss.detail == ("0.015 (10 ok) vs control 0.02 (7 ok), "
                                           "opt_fix 0.021 (9 ok)")
    rate = checks[("B", "arch_fix", "failure rate below control")]
    assert rate.detail.startswith("0/10 = 0 vs control-deep 4/10 = 0.4")
    assert d.because == "the arch fix passes Stage A and Stage B"


def test_incomplete_says_what_is_missing():
    d = dec.decide(stage_a(), RULE)
    assert d.provisional is None
    assert d.missing == ["Stage B: no records (no sweep named *stage_b* and no arm at depth 8);"
                         " needs control, arch_fix"]
    d = dec.decide(stage_a()[:2], RULE)
    assert d.missing[0].startswith("Stage A: no arm for role opt_fix (arch=hybrid, clip=agc)")


def test_unfinished_runs_give_a_provisional_verdict():
    rows = stage_a() + stage_b()
    rows[0] = arm("control", "A", 5, 3, 0.02, unfinished=2)
    d = dec.decide(rows, RULE)
    assert d.outcome == "incomplete" and d.provisional == "gold"
    assert d.missing == ["Stage A control 'control': 2 of 10 planned runs unfinished "
                         "(2 missing)"]
    loose = dec.rule_from_dict({**_rule_dict(), "require_complete": False})
    assert dec.decide(rows, loose).outcome == "gold"


def test_arm_without_finished_runs_is_missing_even_when_not_requiring_completeness():
    loose = dec.rule_from_dict({**_rule_dict(), "require_complete": False})
    rows = stage_a() + [arm("control", "B", 6, 4, 0.03), arm("arch_fix", "B", 0, 0, None,
                                                              unfinished=10)]
    d = dec.decide(rows, loose)
    assert d.outcome == "incomplete" and d.provisional is None
    assert d.missing == ["Stage B arch_fix 'arch_fix-deep': no finished run yet (10 planned)"]


def test_candidate_needs_enough_successful_seeds_and_weak_control_is_skipped():
    d = dec.decide(stage_a(arch=(2, 0, 0.001)) + stage_b(), RULE)
    arch_a = d.verdicts[0]
    assert not arch_a.checks[0].passed and "2 ok runs < 3" in arch_a.checks[0].detail
    # the control never succeeds: it cannot be beaten on loss, only on failure rate
    d = dec.decide(stage_a(control=(0, 10, float("nan"))) + stage_b(), RULE)
    assert d.outcome == "gold"
    assert "not compared (< 3 ok runs): control" in d.verdicts[0].checks[0].detail


def test_failure_rate_tie_with_control_fails_unless_allowed():
    rows = stage_a(control=(10, 0, 0.02)) + stage_b()
    d = dec.decide(rows, RULE)
    assert not d.verdicts[0].passed and d.outcome == "pivot"
    assert any("never failed" in n for n in d.notes)
    data = _rule_dict()
    data["arch_fix"]["strictly_lower_failure_rate"] = False
    assert dec.decide(rows, dec.rule_from_dict(data)).outcome == "gold"


def _rule_dict():
    with open(dec.DEFAULT_RULE) as fh:
        return yaml.safe_load(fh)


def test_default_rule_values():
    assert RULE.metric == "best_val_loss" and RULE.min_successful_seeds == 3
    assert RULE.opt_fix.max_median_loss_regression == 0.10
    assert RULE.roles["arch_fix"] == {"arch": "stable_hybrid", "clip": "none"}
    assert RULE.stages["B"] == dec.StageSpec("stage_b", 8)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(metirc="x"), "unknown key"),
    (lambda d: d.pop("metric"), "missing key"),
    (lambda d: d["opt_fix"].update(max_median_loss_regression=-1), "regression"),
    (lambda d: d["arch_fix"].update(compare_with="some"), "compare_with"),
    (lambda d: d["roles"].pop("opt_fix"), "roles must be"),
    (lambda d: d["stages"]["A"].update(deep=1), r"stages\.A"),
])
def test_bad_rules_are_refused(edit, match):
    data = _rule_dict()
    edit(data)
    with pytest.raises(ValueError, match=match):
        dec.rule_from_dict(data)


def test_stage_of():
    assert dec.stage_of("grid_lines_stage_a", 8, RULE) == "A"  # the name wins
    assert dec.stage_of("deep_study", 8, RULE) == "B"
    assert dec.stage_of("deep_study", "4", RULE) == "A"
    assert dec.stage_of("clip_sweep", 6, RULE) == ""


def test_values_match_and_roles():
    assert dec.values_match(0.01, "0.01") and dec.values_match(None, "none")
    assert dec.values_match("AGC", "agc") and not dec.values_match(4, 8)
    rows = stage_a() + [dict(arm("opt_fix", "A", 5, 0, 0.02), arm_id="x", arm_label="x",
                             clip_value=0.1)]
    roles, problems = dec.resolve_roles(rows, RULE)  # default opt_fix: any AGC value
    assert set(roles) == {"control", "arch_fix"}
    assert "matches 2 arms (opt_fix, x); pin it" in problems["opt_fix"]
    pinned = _rule_dict()
    pinned["roles"]["opt_fix"] = {"arch": "hybrid", "clip": "agc", "clip_value": "0.01"}
    roles, problems = dec.resolve_roles(rows, dec.rule_from_dict(pinned))
    assert roles["opt_fix"]["arm_label"] == "opt_fix" and problems == {}
    roles, _ = dec.resolve_roles(rows, RULE, control="x")
    assert roles["control"]["arm_id"] == "x"


def test_stage_verdicts_directly():
    roles, _ = dec.resolve_roles(stage_b(), RULE)
    vb = dec.evaluate_stage_b(roles, RULE)
    assert vb["arch_fix"].passed and vb["opt_fix"].passed  # 2/10 < 4/10 and +3.3% loss
    roles, _ = dec.resolve_roles(stage_b(opt=(8, 2, 0.034)), RULE)
    checks = dec.evaluate_stage_b(roles, RULE)["opt_fix"].checks
    assert [c.passed for c in checks] == [True, False]
    assert checks[1].detail == "0.034 vs control 0.03: +13.3%"
    del roles["arch_fix"]
    assert set(dec.evaluate_stage_b(roles, RULE)) == {"opt_fix"}
