"""The decision rule's parts: each gate's verdicts and bounds, combining, the outcome table, the
premise, the rule file's validation, stages. Whole hand-made studies are in
test_verdict_uncertainty.py."""

import copy
import math

import pytest
import yaml

from ptychostab.analysis import decide as dec
from ptychostab.analysis import gates as G
from ptychostab.analysis import rule as R

RULE = dec.load_rule()


def _rule_dict():
    with open(dec.DEFAULT_RULE) as fh:
        return yaml.safe_load(fh)


def arm(label="x", stage="A", ok=10, inst=0, nonfinite=0, losses=None, ssim=None, grad=None,
        unsettled=(), ok_nonfinite=0):
    """Evidence of one arm: ``ok`` clean ok runs with ``losses`` (default 0.02 each)."""
    losses = tuple(losses if losses is not None else [0.02] * ok)
    values = {"best_val_loss": losses,
              "amp_ssim": tuple(ssim if ssim is not None else [1 - v for v in losses]),
              "phase_ssim": tuple(1 - 2 * v for v in losses),
              G.GRAD: tuple(grad if grad is not None else [5.0] * len(losses))}
    return G.ArmEvidence(label, stage, ok, inst, nonfinite, tuple(unsettled), ok_nonfinite,
                         values, higher_is_better=frozenset(("amp_ssim", "phase_ssim")))


def spread(center, n, step=0.0002):
    return [round(center + step * (i - (n - 1) / 2), 10) for i in range(n)]


# --- superiority and non-inferiority, as verdict functions ---------------------------------------
@pytest.mark.parametrize("est,lo,hi,verdict", [
    (0.3, 0.01, 0.6, G.PASS),  # low bound above 0
    (0.3, 0.0, 0.6, G.INCONCLUSIVE),  # exactly 0 is not above
    (0.0, -0.2, 0.09, G.FAIL),  # the high bound below the 10% that matters
    (0.0, -0.2, 0.10, G.INCONCLUSIVE),  # at it: not below
    (0.05, 0.01, 0.05, G.PASS),  # pass is checked first (also below min_effect)
])
def test_superiority(est, lo, hi, verdict):
    assert G.superiority(est, lo, hi, 0.10) == verdict


@pytest.mark.parametrize("est,lo,hi,verdict", [
    (0.02, -0.05, 0.10, G.PASS),  # high bound within the bound (inclusive)
    (0.02, -0.05, 0.1001, G.INCONCLUSIVE),
    (0.2, 0.1001, 0.3, G.FAIL),  # low bound beyond
    (0.2, 0.10, 0.3, G.INCONCLUSIVE),  # at the bound: not beyond
])
def test_non_inferiority(est, lo, hi, verdict):
    assert G.non_inferiority(est, lo, hi, 0.10) == verdict


# --- failure rate -----------------------------------------------------------------------------
@pytest.mark.parametrize("fix,ctrl,verdict,point", [
    ((0, 10), (3, 10), G.INCONCLUSIVE, G.PASS),  # the strategy's 10 seeds: not enough
    ((0, 24), (7, 24), G.PASS, G.PASS),
    ((0, 3), (1, 4), G.INCONCLUSIVE, G.PASS),  # "0/3 vs 1/4 read as lower": no more
    ((5, 10), (5, 10), G.INCONCLUSIVE, G.FAIL),
    ((0, 40), (0, 40), G.FAIL, G.FAIL),  # nothing to reduce, shown to be < 10% apart
    ((8, 10), (1, 10), G.FAIL, G.FAIL),  # clearly worse
])
def test_failure_rate_gate(fix, ctrl, verdict, point):
    f = arm("fix", ok=fix[1] - fix[0], inst=fix[0])
    c = arm("ctl", ok=ctrl[1] - ctrl[0], inst=ctrl[0])
    g = G.failure_rate_gate(f, c, 0.95, 0.10, settle=True)
    assert (g.verdict, g.point, g.against, g.kind) == (verdict, point, "ctl", "superiority")
    assert g.estimate == pytest.approx(ctrl[0] / ctrl[1] - fix[0] / fix[1])
    assert g.low < g.estimate < g.high or g.estimate in (g.low, g.high)
    assert ("seeds per arm" in g.settle) == (verdict == G.INCONCLUSIVE)
    assert G.failure_rate_gate(f, c, 0.95, 0.10, point=True).verdict == point


def test_failure_rate_gate_settle_estimate_and_untestable():
    g = G.failure_rate_gate(arm("fix", ok=10), arm("ctl", ok=7, inst=3), 0.95, 0.10, settle=True)
    assert g.seeds == 21 and "about 21 seeds per arm" in g.settle
    g = G.failure_rate_gate(arm("fix", ok=0), arm("ctl", ok=7, inst=3), 0.95, 0.10)
    assert g.verdict == G.UNTESTABLE and g.point == G.UNTESTABLE


# --- median loss ------------------------------------------------------------------------------
def test_loss_gate_superiority():
    ctrl = arm("ctl", losses=spread(0.020, 10))
    clear = G.loss_gate(arm("fix", losses=spread(0.015, 10)), ctrl, "best_val_loss", 3, 0.95,
                        0.02)
    assert clear.verdict == G.PASS and clear.estimate == pytest.approx(0.25)
    assert clear.low > 0 and clear.against == "ctl"
    # 0.1% below with a 10% spread: the bootstrap interval spans 0 and 2% -> inconclusive
    noisy_c = arm("ctl", ok=4, losses=[0.018, 0.020, 0.022, 0.021])
    noisy_f = arm("fix", ok=3, losses=[0.0178, 0.02048, 0.023])
    g = G.loss_gate(noisy_f, noisy_c, "best_val_loss", 3, 0.95, 0.02, settle=True)
    assert g.verdict == G.INCONCLUSIVE and g.point == G.PASS
    assert g.low < 0 < 0.02 < g.high and "seeds per arm" in g.settle
    # equal medians, tight: the improvement is shown below the 2% that matters
    same = G.loss_gate(arm("fix", losses=spread(0.02, 12, 1e-5)),
                       arm("ctl", losses=spread(0.02, 12, 1e-5)), "best_val_loss", 3, 0.95, 0.02)
    assert same.verdict == G.FAIL and same.high < 0.02


@pytest.mark.parametrize("fix,ref,verdict,why", [
    ({}, {"ok": 0, "inst": 5, "losses": []}, G.PASS, "no ok run in 5"),
    ({}, {"ok": 0, "inst": 2, "losses": []}, G.UNTESTABLE, "not estimable"),
    ({}, {"ok": 2, "inst": 3, "losses": [0.02, 0.02]}, G.UNTESTABLE,
     "about 3 more seed(s) at the observed 2/5"),
    ({"ok": 0, "inst": 4, "losses": []}, {}, G.FAIL, "no ok run in 4"),
    ({"ok": 2, "losses": [0.01, 0.01]}, {}, G.UNTESTABLE, "2 finite value(s) < 3"),
])
def test_loss_gate_trust(fix, ref, verdict, why):
    g = G.loss_gate(arm("fix", **fix), arm("ref", **ref), "best_val_loss", 3, 0.95, 0.02)
    assert g.verdict == verdict and why in g.reason, g


def test_regression_gate_bound_is_exact_and_inclusive():
    ref = arm("ref", losses=[0.02] * 5)
    at = G.regression_gate(arm("fix", losses=[0.022] * 5), ref, "best_val_loss", 3, 0.95, 0.10)
    assert at.verdict == G.PASS and at.point == G.PASS  # +10.0% exactly: within
    over = G.regression_gate(arm("fix", losses=[0.0221] * 5), ref, "best_val_loss", 3, 0.95,
                             0.10)
    assert over.verdict == G.FAIL and over.low > 0.10
    # SSIM: higher is better; 10% below is the bound
    s = G.regression_gate(arm("d", ssim=[0.81] * 10, losses=[0.02] * 10),
                          arm("s", ssim=[0.9] * 10, losses=[0.02] * 10), "amp_ssim", 3, 0.95,
                          0.10, higher_is_better=True)
    assert s.verdict == G.PASS and s.estimate == pytest.approx(0.1)
    s = G.regression_gate(arm("d", ssim=[0.80] * 10, losses=[0.02] * 10),
                          arm("s", ssim=[0.9] * 10, losses=[0.02] * 10), "amp_ssim", 3, 0.95,
                          0.10, higher_is_better=True)
    assert s.verdict == G.FAIL


def test_regression_gate_inconclusive_and_reference_never_ok():
    ref = arm("ref", losses=spread(0.02, 6, 0.002))
    g = G.regression_gate(arm("fix", losses=spread(0.021, 6, 0.002)), ref, "best_val_loss", 3,
                          0.95, 0.10, settle=True)
    assert g.verdict == G.INCONCLUSIVE and g.low <= 0.10 < g.high and g.point == G.PASS
    never = arm("ref", ok=0, inst=5, losses=[])
    assert G.regression_gate(arm("fix"), never, "best_val_loss", 3, 0.95, 0.1).verdict == G.PASS
    assert G.regression_gate(arm("fix"), never, "best_val_loss", 3, 0.95, 0.1,
                             reference_beaten=False).verdict == G.FAIL


# --- limit gates --------------------------------------------------------------------------------
def test_nonfinite_gate_counts_ok_runs_with_nan_metrics():
    assert G.nonfinite_gate(arm(inst=1, nonfinite=1), 0).verdict == G.FAIL
    assert G.nonfinite_gate(arm(), 0).verdict == G.PASS
    g = G.nonfinite_gate(arm(ok_nonfinite=1, unsettled=("seed=3 (ok, non-finite amp_ssim)",)), 0)
    assert g.verdict == G.FAIL and "1 ok with a non-finite metric" in g.numbers
    assert G.nonfinite_gate(arm(ok=0, losses=[]), 0).verdict == G.UNTESTABLE


def test_grad_gate():
    a = arm("a", grad=[5.0] * 10)
    assert G.grad_gate(arm("b", stage="B", grad=[40.0] * 10), a, 1e6, 10).verdict == G.PASS
    assert G.grad_gate(arm("b", stage="B", grad=[50.0] * 10), a, 1e6, 10).verdict == G.PASS
    g = G.grad_gate(arm("b", stage="B", grad=[50.1] * 10), a, 1e6, 10)
    assert g.verdict == G.FAIL and "beyond 10x" in g.reason
    g = G.grad_gate(arm("b", stage="B", grad=[1e12] * 10), a, 1e6, 10)
    assert g.verdict == G.FAIL and "10 ok run(s) above failure.grad_norm_bound" in g.reason
    g = G.grad_gate(arm("b", stage="B", grad=[5.0] * 9 + [2e6]), a, 1e6, 10)
    assert g.verdict == G.FAIL and "1 ok run(s) above" in g.reason  # one spike is enough
    assert G.grad_gate(arm("b", stage="B", grad=[5.0] * 3), None, 1e6, 10).verdict == \
        G.UNTESTABLE
    assert G.grad_gate(arm("b", stage="B", ok=0, losses=[]), a, 1e6, 10).verdict == G.UNTESTABLE


def test_counted_three_ways():
    a = arm(ok=3, losses=[0.01, 0.02, 0.03], unsettled=("seed=4 (timeout)", "seed=5 (oom)"))
    failed, worst, best = (a.counted(h) for h in G.COUNTED)
    assert (failed.n_instability, failed.n_ok, failed.n_unsettled) == (2, 3, 0)
    assert worst.vals("best_val_loss") == (0.01, 0.02, 0.03, 0.03, 0.03)
    assert best.vals("best_val_loss") == (0.01, 0.02, 0.03, 0.01, 0.01)
    assert worst.vals("amp_ssim")[-1] == pytest.approx(0.97)  # the lowest SSIM
    assert best.vals("amp_ssim")[-1] == pytest.approx(0.99)
    assert worst.n_ok == best.n_ok == 5
    with pytest.raises(ValueError):
        a.counted(True)


def test_combine():
    def gate(v, p=None):
        return G.Gate("failure rate", "A", "", v, "", "", point=p or v)

    p, f, i, u = (gate(v) for v in G.VERDICTS)
    assert G.combine([p, f, u, i])[0] == G.FAIL
    assert G.combine([p, u, i])[0] == G.UNTESTABLE
    assert G.combine([p, i])[0] == G.INCONCLUSIVE
    assert G.combine([p, p]) == (G.PASS, "passes every gate")
    assert G.combine([gate(G.INCONCLUSIVE, G.PASS), p], point=True)[0] == G.PASS
    assert G.combine([])[0] == G.UNTESTABLE


# --- the premise --------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,value", [
    ((0, 10), (0, 10), G.ABSENT),  # 0.21 < 0.3 in both
    ((0, 5), (0, 5), G.NOT_SETTLED),  # 0.35: not shown
    ((0, 1), (0, 1), G.NOT_SETTLED),  # the single-seed NOT REPRODUCED of issue 19
    ((1, 30), (1, 30), G.ABSENT),  # exists, far below the premise's rate
    ((3, 10), (0, 10), G.PRESENT),
    ((1, 10), (0, 10), G.PRESENT),  # failed, upper bound 0.37: not shown absent
    ((0, 10), None, G.NOT_SETTLED),
    ((2, 10), None, G.PRESENT),
])
def test_premise(a, b, value):
    ctrl = {"A": arm("c", ok=a[1] - a[0], inst=a[0])}
    ctrl["B"] = None if b is None else arm("c", "B", ok=b[1] - b[0], inst=b[0])
    p = G.premise(ctrl, 0.3, 0.95)
    assert p.value == value, p.text
    if value == G.NOT_SETTLED:
        assert "7 control runs per stage without a failure" in p.text
    if (a, b) == ((1, 30), (1, 30)):
        assert "the instability exists but far below the premise's rate" in p.text


def test_premise_point_reading():
    ctrl = {"A": arm("c", ok=1), "B": arm("c", "B", ok=1)}
    assert G.premise(ctrl, 0.3, 0.95, point=True).value == G.ABSENT
    assert G.premise(ctrl, 0.3, 0.95).value == G.NOT_SETTLED
    ctrl["B"] = arm("c", "B", ok=29, inst=1)
    assert G.premise(ctrl, 0.3, 0.95, point=True).value == G.PRESENT


# --- the outcome table --------------------------------------------------------------------------
def test_table_is_total_and_first_match():
    import itertools

    seen = {dec.outcome_of(*key) for key in itertools.product(*dec.COLUMN_VALUES)}
    assert seen == set(dec.OUTCOMES)
    yes = ("yes", "yes", "yes")
    assert dec.outcome_of(*yes, G.ABSENT, G.PASS, G.PASS) == dec.NOT_REPRODUCED
    assert dec.outcome_of(*yes, G.PRESENT, G.INCONCLUSIVE, G.PASS) == dec.INCOMPLETE
    assert dec.outcome_of(*yes, G.PRESENT, G.FAIL, G.INCONCLUSIVE) == dec.INCOMPLETE
    assert dec.outcome_of(*yes, G.PRESENT, G.FAIL, G.FAIL) == dec.PIVOT
    assert dec.outcome_of(*yes, G.NOT_SETTLED, G.PASS, G.PASS) == dec.INCOMPLETE
    assert dec.outcome_of("yes", "yes", "untestable", G.PRESENT, G.PASS, G.PASS) == \
        dec.INCOMPLETE
    assert dec.outcome_of("yes", "no", "yes", G.PRESENT, G.PASS, G.PASS) == dec.INCOMPLETE
    assert len(dec.TABLE_HEADER) == len(dec.OUTCOME_TABLE[0])


def test_possible_outcomes():
    assert dec.possible_outcomes(G.PRESENT, G.INCONCLUSIVE, G.PASS) == [dec.GOLD, dec.SILVER]
    assert dec.possible_outcomes(G.NOT_SETTLED, G.PASS, G.FAIL) == [dec.GOLD,
                                                                    dec.NOT_REPRODUCED]


# --- the rule file ------------------------------------------------------------------------------
def test_default_rule_values():
    assert RULE.metric == "best_val_loss" and RULE.min_successful_seeds == 3
    assert RULE.ssim_metrics == ("amp_ssim", "phase_ssim")
    assert RULE.evidence == "interval" and RULE.evidence_level == 0.95 and not RULE.point
    assert (RULE.min_effect.failure_rate, RULE.min_effect.loss) == (0.10, 0.02)
    assert RULE.premise_failure_rate == 0.3
    assert (RULE.stage_b.max_nonfinite, RULE.stage_b.grad_norm_factor) == (0, 10.0)
    assert RULE.opt_fix.max_median_loss_regression == 0.10 and RULE.stage_b_tolerance == 0.10
    assert RULE.compare_with == "control" and RULE.robust_to_unsettled
    assert not RULE.allow_protocol_mismatch and not RULE.demonstration
    assert (RULE.stages["A"].depth, RULE.stages["B"].depth) == (4, 8)
    assert RULE.stages["A"].protocol == RULE.stages["B"].protocol
    assert RULE.stages["A"].protocol["trainer.max_epochs"] == 50
    demo = dec.load_rule(dec.DEFAULT_RULE.parent / "demo.yaml")
    assert demo.demonstration and demo.point


def _refusal(edit) -> str:
    data = _rule_dict()
    edit(data)
    with pytest.raises(ValueError) as err:
        dec.rule_from_dict(data)
    return str(err.value)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(metirc="x"), "metirc: 'x' is not allowed; allowed: no such key"),
    (lambda d: d.pop("metric"), "metric: missing key"),
    (lambda d: d.pop("evidence_level"), "evidence_level: missing key"),
    (lambda d: d.update(require_complete=True), "require_complete"),
    (lambda d: d.update(stage_b_tolerance=1), "stage_b_tolerance: 1 is not allowed; allowed: a "
                                              "number in [0, 1)"),
    (lambda d: d.update(stage_b_tolerance=-0.1), "stage_b_tolerance: -0.1"),
    (lambda d: d.update(min_successful_seeds=0), "min_successful_seeds: 0 is not allowed; "
                                                 "allowed: an integer >= 1"),
    (lambda d: d.update(min_successful_seeds=2.5), "min_successful_seeds: 2.5"),
    (lambda d: d["opt_fix"].update(max_median_loss_regression=-1),
     "opt_fix.max_median_loss_regression: -1"),
    (lambda d: d["opt_fix"].update(max_nonfinite=-1), "opt_fix.max_nonfinite: -1 is not "
                                                      "allowed; allowed: an integer >= 0 or null"),
    (lambda d: d["arch_fix"].update(max_nonfinite=0.5), "arch_fix.max_nonfinite: 0.5"),
    (lambda d: d["stage_b"].update(max_nonfinite=-2), "stage_b.max_nonfinite: -2"),
    (lambda d: d["stage_b"].update(grad_norm_factor=0.5), "stage_b.grad_norm_factor: 0.5 is not "
                                                          "allowed; allowed: a number >= 1"),
    (lambda d: d.update(evidence_level=0.5), "evidence_level: 0.5 is not allowed; allowed: a "
                                             "number in (0.5, 1)"),
    (lambda d: d.update(evidence_level=1.0), "evidence_level: 1.0"),
    (lambda d: d.update(median_ci_level=1.5), "median_ci_level: 1.5"),
    (lambda d: d.update(evidence="pointy"), "evidence: 'pointy' is not allowed; allowed: one of "
                                            "['interval', 'point']"),
    (lambda d: d["min_effect"].update(loss=1.0), "min_effect.loss: 1.0"),
    (lambda d: d["min_effect"].pop("failure_rate"), "min_effect.failure_rate: missing key"),
    (lambda d: d.update(premise_failure_rate=0), "premise_failure_rate: 0"),
    (lambda d: d.update(ssim_metric="amp_ssim"), "ssim_metric: 'amp_ssim' is not allowed"),
    (lambda d: d.update(ssim_metrics="amp_ssim"), "ssim_metrics: 'amp_ssim'"),
    (lambda d: d.update(compare_with="some"), "compare_with: 'some'"),
    (lambda d: d.update(robust_to_unsettled="yes"), "robust_to_unsettled: 'yes' is not allowed; "
                                                    "allowed: true or false"),
    (lambda d: d["roles"].pop("opt_fix"), "roles: "),
    (lambda d: d["stages"]["A"].update(deep=1), "stages.A.deep: 1 is not allowed"),
    (lambda d: d["stages"]["B"].update(depth=4), "stages.B.depth: 4 is not allowed; allowed: an "
                                                 "integer > stages.A.depth (4)"),
    (lambda d: d["stages"]["A"].update(protocol={"arch": {"name": "x"}}),
     "stages.A.protocol.arch.name: 'x'"),
    (lambda d: d["stages"]["A"].update(protocol={"seed": 3}), "stages.A.protocol.seed: 3"),
])
def test_bad_rules_are_refused_naming_key_value_and_range(edit, match):
    assert match in _refusal(edit)


def test_a_rule_file_is_validated_whole():
    def edit(d):
        d.update(stage_b_tolerance=1, min_successful_seeds=0, evidence_level=2)
        d.pop("premise_failure_rate")
    text = _refusal(edit)
    assert "refused (4 problem(s))" in text
    for key in ("stage_b_tolerance: 1", "min_successful_seeds: 0", "evidence_level: 2",
                "premise_failure_rate: missing key"):
        assert key in text


def test_edges_of_ranges_are_accepted():
    data = copy.deepcopy(_rule_dict())
    data.update(stage_b_tolerance=0, evidence_level=0.51, min_successful_seeds=1)
    data["stage_b"].update(max_nonfinite=None, grad_norm_factor=1)
    data["arch_fix"].update(max_nonfinite=None)
    r = dec.rule_from_dict(data)
    assert r.stage_b.max_nonfinite is None and r.stage_b_tolerance == 0.0


def test_stage_of():
    assert dec.stage_of("grid_lines_stage_a", 8, RULE) == "A"  # the name wins
    assert dec.stage_of("deep_study", 8, RULE) == "B"
    assert dec.stage_of("deep_study", "4", RULE) == "A"
    assert dec.stage_of("clip_sweep", 4, RULE) == "clip"  # kept out of both stages
    assert dec.stage_of("seed_control_rerun", 4, RULE, outside=True) == R.OUTSIDE
    assert dec.stage_of("stage_a", 4, RULE, outside=True) == R.OUTSIDE  # whatever its name
    assert R.by_depth("deep_study", RULE) and not R.by_depth("stage_b_copy", RULE)
    assert not R.by_depth("my_clip_sweep", RULE)


def test_gate_interval_text():
    g = G.failure_rate_gate(arm("fix", ok=10), arm("ctl", ok=7, inst=3), 0.95, 0.10)
    assert g.interval_text() == "+0.3 [-0.05, +0.604]"
    assert G.nonfinite_gate(arm(), 0).interval_text() == "-"
    assert math.isnan(G.nonfinite_gate(arm(), 0).estimate)


def test_premise_bound_must_be_strictly_below():
    """A bound equal to the premise's rate is not below it."""
    from ptychostab.analysis import stats

    rate = stats.wilson_bounds(0, 10, 0.95)[1]
    ctrl = {"A": arm("c", ok=10), "B": arm("c", "B", ok=10)}
    assert G.premise(ctrl, rate, 0.95).value == G.NOT_SETTLED
    assert G.premise(ctrl, rate + 1e-9, 0.95).value == G.ABSENT
