"""The decision rule: gates (each verdict), the outcome table (each outcome), protocol,
robustness. Rows are summary rows as the aggregator writes them."""

import copy
import math

import pytest
import yaml

from ptychostab.analysis import decide as dec
from ptychostab.analysis import gates as G

RULE = dec.load_rule()
FIELDS = {"control": {"arch": "hybrid", "clip": "none"},
          "arch_fix": {"arch": "stable_hybrid", "clip": "none"},
          "opt_fix": {"arch": "hybrid", "clip": "agc", "clip_value": 0.01}}


def arm(role, stage, ok, inst, loss, nonfinite=0, unsettled=0, loss_n=None, ssim=None,
        runs=""):
    """A summary row: ``ok`` successes, ``inst`` instability failures (``nonfinite`` of them),
    ``unsettled`` runs that ended otherwise; ``loss_n`` finite loss values (default ``ok``)."""
    label = f"{role}{'' if stage == 'A' else '-deep'}"
    n = ok if loss_n is None else loss_n
    return {"stage": stage, "sweep": f"stage_{stage.lower()}", "arm_id": label,
            "arm_label": label, **FIELDS[role], "depth": 4 if stage == "A" else 8,
            "n_ok": ok, "n_instability": inst, "n_nonfinite": nonfinite,
            "n_unsettled": unsettled, "unsettled_runs": runs or "; ".join(
                f"seed={90 + i} (oom)" for i in range(unsettled)),
            "best_val_loss_n": n, "best_val_loss_median": loss if n else math.nan,
            "amp_ssim_n": n, "amp_ssim_median": (1 - loss if ssim is None else ssim)
            if n else math.nan}


def stage_a(control=(7, 3, 0.020), arch=(10, 0, 0.015), opt=(9, 1, 0.021), **kw):
    return [arm("control", "A", *control, **kw.get("c", {})),
            arm("arch_fix", "A", *arch, **kw.get("a", {})),
            arm("opt_fix", "A", *opt, **kw.get("o", {}))]


def stage_b(control=(6, 4, 0.030), arch=(10, 0, 0.016), opt=(8, 2, 0.031), **kw):
    return [arm("control", "B", *control, **kw.get("c", {})),
            arm("arch_fix", "B", *arch, **kw.get("a", {})),
            arm("opt_fix", "B", *opt, **kw.get("o", {}))]


CASES = {
    "gold": (stage_a() + stage_b(), dec.GOLD),
    "gold: control never fails in A (neutral there), fails in B": (
        stage_a(control=(10, 0, 0.02), opt=(10, 0, 0.021)) + stage_b(), dec.GOLD),
    "silver: arch fix loses on loss": (stage_a(arch=(10, 0, 0.025)) + stage_b(), dec.SILVER),
    "silver: arch fix has a NaN run": (
        stage_a(arch=(9, 1, 0.015), a={"nonfinite": 1}) + stage_b(), dec.SILVER),
    "silver: arch fix does not scale (deep loss > +10% of its Stage A)": (
        stage_a() + stage_b(arch=(10, 0, 0.0166)), dec.SILVER),
    "silver: arch fix deep SSIM > 10% below Stage A": (
        stage_a() + stage_b(a={"ssim": 0.8}), dec.SILVER),
    "silver: loss regression exactly 10%": (
        stage_a(arch=(10, 0, 0.05), opt=(9, 1, 0.022)) + stage_b(opt=(8, 2, 0.033)),
        dec.SILVER),
    "pivot: opt fix regresses 11%": (
        stage_a(arch=(10, 0, 0.05), opt=(9, 1, 0.0222)) + stage_b(), dec.PIVOT),
    "pivot: both fail B": (stage_a() + stage_b(arch=(5, 5, 0.02), opt=(4, 6, 0.03)),
                           dec.PIVOT),
    "pivot: fix fails more often than a never-failing control": (
        stage_a(control=(10, 0, 0.02), arch=(9, 1, 0.015), opt=(8, 2, 0.02))
        + stage_b(), dec.PIVOT),
    "not reproduced: the control never fails": (
        stage_a(control=(10, 0, 0.02), arch=(10, 0, 0.01), opt=(10, 0, 0.02))
        + stage_b(control=(10, 0, 0.03), arch=(10, 0, 0.011), opt=(10, 0, 0.03)),
        dec.NOT_REPRODUCED),
    "incomplete: Stage A only": (stage_a(), dec.INCOMPLETE),
    "incomplete: no Stage A": (stage_b(), dec.INCOMPLETE),
    "incomplete: control with too few finite values (NaN metrics)": (
        stage_a(control=(4, 3, 0.02), c={"loss_n": 2}) + stage_b(), dec.INCOMPLETE),
}


@pytest.mark.parametrize("name", CASES)
def test_outcome_table(name):
    rows, expected = CASES[name]
    d = dec.decide(copy.deepcopy(rows), RULE)
    assert d.outcome == expected, (d.because, [(g.stage, g.subject, g.name, g.verdict)
                                                for g in d.gates], d.to_run)
    assert (d.to_run != []) == (expected == dec.INCOMPLETE)


def test_table_is_total_and_first_match():
    seen = set()
    for both in ("yes", "no"):
        for shared in ("yes", "no"):
            for cf in ("yes", "no", "unknown"):
                for g in (G.PASS, G.FAIL, G.UNTESTABLE):
                    for s in (G.PASS, G.FAIL, G.UNTESTABLE):
                        seen.add(dec.outcome_of(both, shared, cf, g, s))
    assert seen == set(dec.OUTCOMES)
    assert dec.outcome_of("yes", "yes", "no", G.PASS, G.PASS) == dec.NOT_REPRODUCED


def _arm(label="x", stage="A", **kw):
    base = dict(n_ok=5, n_instability=0, n_nonfinite=0, loss_n=5, loss_median=0.02,
                ssim_n=5, ssim_median=0.9)
    return G.ArmEvidence(label, stage, **{**base, **kw})


@pytest.mark.parametrize("fix,ctrl,verdict", [
    ({"n_instability": 1}, {"n_instability": 3}, G.PASS),
    ({"n_instability": 3}, {"n_instability": 1}, G.FAIL),
    ({"n_instability": 2}, {"n_instability": 2}, G.FAIL),  # equal while control fails
    ({"n_instability": 1}, {}, G.FAIL),  # more often than a never-failing control
    ({}, {}, G.NEUTRAL),
    ({"n_ok": 0}, {"n_instability": 2}, G.UNTESTABLE),
])
def test_failure_rate_gate(fix, ctrl, verdict):
    g = G.failure_rate_gate(_arm("fix", **fix), _arm("ctl", **ctrl))
    assert g.verdict == verdict and "fix" in g.numbers and g.reason


@pytest.mark.parametrize("fix,ref,verdict,why", [
    ({"loss_median": 0.01}, {}, G.PASS, "below"),
    ({"loss_median": 0.03}, {}, G.FAIL, "not below"),
    ({}, {"n_ok": 0, "n_instability": 5, "loss_n": 0}, G.PASS, "no ok run in 5"),
    ({}, {"n_ok": 0, "n_instability": 2, "loss_n": 0}, G.UNTESTABLE, "not estimable"),
    ({}, {"n_ok": 3, "n_instability": 3, "loss_n": 2}, G.UNTESTABLE,
     "about 3 more seed(s) at the observed 2/6"),
    ({"n_ok": 0, "n_instability": 4, "loss_n": 0}, {}, G.FAIL, "no ok run in 4"),
    ({"loss_n": 2, "n_ok": 5}, {}, G.UNTESTABLE, "2 finite value(s) < 3"),
])
def test_loss_gate(fix, ref, verdict, why):
    g = G.loss_gate(_arm("fix", **fix), _arm("ref", **ref), 3, 0.0, True, "loss")
    assert g.verdict == verdict and why in g.reason, g


def test_regression_gate_bound_is_exact():
    ref = _arm(loss_median=0.02)
    assert G.loss_gate(_arm(loss_median=0.022), ref, 3, 0.10, False, "r").verdict == G.PASS
    assert G.loss_gate(_arm(loss_median=0.0221), ref, 3, 0.10, False, "r").verdict == G.FAIL


def test_nonfinite_and_depth_gates():
    assert G.nonfinite_gate(_arm(n_nonfinite=1, n_instability=1), 0).verdict == G.FAIL
    assert G.nonfinite_gate(_arm(), 0).verdict == G.PASS
    assert G.nonfinite_gate(_arm(n_ok=0), 0).verdict == G.UNTESTABLE
    deep, shallow = _arm(stage="B", loss_median=0.022), _arm(loss_median=0.02)
    assert G.depth_gate(deep, shallow, 3, 0.1, "loss").verdict == G.PASS
    assert G.depth_gate(_arm(stage="B", loss_median=0.0221), shallow, 3, 0.1,
                        "loss").verdict == G.FAIL
    assert G.depth_gate(_arm(stage="B", ssim_median=0.80), _arm(), 3, 0.1,
                        "ssim").verdict == G.FAIL


def test_combine():
    p, f, n, u = (G.Gate("failure rate", "A", "", v, "", "") for v in G.VERDICTS)
    assert G.combine([p, f, u])[0] == G.FAIL
    assert G.combine([p, u])[0] == G.UNTESTABLE
    assert G.combine([p, n])[0] == G.PASS
    assert G.combine([n, n]) == (G.FAIL, "no failure-rate pass in any stage")


def test_not_reproduced_says_so_plainly():
    d = dec.decide(CASES["not reproduced: the control never fails"][0], RULE)
    assert d.because.startswith("the control had no instability failure in either stage "
                                "(Stage A 0/10 = 0, Stage B 0/10 = 0)")
    assert {g.verdict for g in d.gates if g.name == "failure rate"} == {G.NEUTRAL}


def test_stage_a_only_is_incomplete_with_what_is_missing():
    d = dec.decide(stage_a(), RULE)
    assert d.outcome == dec.INCOMPLETE
    assert d.to_run[0].startswith("Stage B: no records (no sweep named *stage_b*")
    assert d.provisional  # what is still possible
    d = dec.decide(stage_a(arch=(3, 7, 0.03), opt=(3, 7, 0.03)), RULE)
    assert d.provisional == "PIVOT"  # both fixes already fail Stage A


def test_untestable_control_states_seeds_needed():
    rows = stage_a(control=(4, 3, 0.02), c={"loss_n": 2}) + stage_b()
    d = dec.decide(rows, RULE)
    line = next(t for t in d.to_run if "median loss below control untestable" in t)
    assert "control: 2 finite value(s) < 3" in line
    assert "about 4 more seed(s) at the observed 2/7" in line
    assert d.provisional == "GOLD or SILVER or PIVOT"


def test_control_never_ok_is_beaten():
    rows = stage_a(control=(0, 10, math.nan)) + stage_b()
    d = dec.decide(rows, RULE)
    assert d.outcome == dec.GOLD
    g = next(g for g in d.gates if g.name == "median loss below control")
    assert g.verdict == G.PASS and "has no ok run in 10 finished runs" in g.reason


def test_robustness_both_ways():
    # 1 oom run in the Stage A opt fix cannot change GOLD: it stands
    rows = stage_a(opt=(9, 1, 0.021, 0, 1)) + stage_b()
    d = dec.decide(rows, RULE)
    assert d.outcome == dec.GOLD and len(d.cases) == 2
    assert any("it stands" in n for n in d.notes)
    # the arch fix's Stage B: 2 successes, 1 failure vs control 2/4... 3 missing runs decide
    rows = stage_a() + stage_b(control=(3, 1, 0.03), arch=(3, 0, 0.016, 0, 3))
    d = dec.decide(rows, RULE)
    assert d.outcome == dec.INCOMPLETE and d.provisional == dec.GOLD
    settle = [t for t in d.to_run if "settle" in t]
    assert len(settle) == 1 and settle[0].startswith("Stage B arch_fix 'arch_fix-deep': "
                                                     "settle 3 run(s) (seed=90 (oom)")
    assert "python train.py -m +experiment=stage_b retry=[oom,exception]" in settle[0]


def test_protocol_mismatch_is_incomplete_unless_allowed():
    rows = stage_a() + stage_b()
    same = {"trainer.lr": 0.001, "arch.name": "hybrid", "depth": 4}
    protocols = {(r["stage"], r["sweep"], r["arm_id"]): {**same, "depth": r["depth"],
                                                         "arch.name": r["arch"]} for r in rows}
    assert dec.decide(rows, RULE, protocols=protocols).outcome == dec.GOLD
    protocols[("A", "stage_a", "opt_fix")]["trainer.lr"] = 0.01
    d = dec.decide(rows, RULE, protocols=protocols)
    assert d.outcome == dec.INCOMPLETE and d.provisional == dec.GOLD
    assert d.mismatches == ["Stage A control vs 'opt_fix': trainer.lr: 0.001 (control) vs "
                            "0.01 (opt_fix)"]
    loose = dec.rule_from_dict({**_rule_dict(), "allow_protocol_mismatch": True})
    d = dec.decide(rows, loose, protocols=protocols)
    assert d.outcome == dec.GOLD and "allow_protocol_mismatch" in d.notes[0]
    protocols[("A", "stage_a", "opt_fix")]["trainer.lr"] = 0.001
    protocols[("B", "stage_b", "arch_fix-deep")]["trainer.max_epochs"] = 20  # across stages
    d = dec.decide(rows, RULE, protocols=protocols)
    assert d.outcome == dec.INCOMPLETE
    assert d.mismatches[-1].startswith("arch_fix Stage A vs Stage B: trainer.max_epochs")


def _rule_dict():
    with open(dec.DEFAULT_RULE) as fh:
        return yaml.safe_load(fh)


def test_compare_with_all():
    rows = stage_a(opt=(9, 1, 0.012)) + stage_b()  # the opt fix has the lowest loss
    assert dec.decide(rows, RULE).outcome == dec.GOLD
    rule = dec.rule_from_dict({**_rule_dict(), "compare_with": "all"})
    d = dec.decide(rows, rule)
    assert d.outcome == dec.SILVER
    names = {g.name for g in d.gates}
    assert "median loss below opt_fix" in names and "failure rate vs opt_fix" in names


def test_default_rule_values():
    assert RULE.metric == "best_val_loss" and RULE.min_successful_seeds == 3
    assert RULE.opt_fix.max_median_loss_regression == 0.10 and RULE.stage_b_tolerance == 0.10
    assert RULE.compare_with == "control" and RULE.robust_to_unsettled
    assert not RULE.allow_protocol_mismatch and not RULE.demonstration
    assert RULE.stages["B"] == dec.rule_from_dict(_rule_dict()).stages["B"]
    assert dec.load_rule(dec.DEFAULT_RULE.parent / "demo.yaml").demonstration


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(metirc="x"), "unknown key"),
    (lambda d: d.pop("metric"), "missing key"),
    (lambda d: d.update(require_complete=True), "unknown key"),
    (lambda d: d["opt_fix"].update(max_median_loss_regression=-1), "regression"),
    (lambda d: d.update(compare_with="some"), "compare_with"),
    (lambda d: d.update(stage_b_tolerance=2), "stage_b_tolerance"),
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
    assert dec.stage_of("clip_sweep", 4, RULE) == "clip"  # kept out of both stages
