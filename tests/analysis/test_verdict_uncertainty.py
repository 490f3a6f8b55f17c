"""Issue 19's families, each a hand-made study (no training) whose right outcome follows from the
strategy's text: a verdict claims only what its seeds show; Stage B's conditions bind both fixes;
the other fix stays in view; the protocol is checked against the study's."""

import math

import numpy as np
import pytest
import yaml
from _study import RULE, arms, decide, declared, ok, study

from ptychostab.analysis import decide as dec
from ptychostab.analysis import gates as G
from ptychostab.analysis import power, stats
from ptychostab.analysis.protocol import ArmProtocol


def _rule(**changes):
    data = yaml.safe_load(dec.DEFAULT_RULE.read_text())
    for key, value in changes.items():
        data[key] = value
    return dec.rule_from_dict(data)


def clear_study(**over):
    """24 seeds per arm: the control fails 8/24 (Stage A) and 10/24 (Stage B); both fixes never
    fail; the arch fix's loss 25% below the control's and within 4% of it at depth; AGC's loss
    +2.5% over the control's."""
    base = dict(control_a=ok(16, 0.020, 1e-4) + ["nonfinite"] * 8,
                arch_a=ok(24, 0.015, 1e-4), opt_a=ok(24, 0.0205, 1e-4),
                control_b=ok(14, 0.030, 1e-4) + ["diverged"] * 10,
                arch_b=ok(24, 0.0155, 1e-4), opt_b=ok(24, 0.0210, 1e-4))
    base.update(over)
    return arms(**base)


def gate(d, stage, subject, name, against=None):
    hits = [g for g in d.gates if (g.stage, g.subject, g.name) == (stage, subject, name)
            and (against is None or g.against == against)]
    assert len(hits) == 1, [(g.stage, g.subject, g.name, g.against) for g in d.gates]
    return hits[0]


# --- gates with their uncertainty ------------------------------------------------------------
def test_a_clear_study_is_gold_with_the_other_fix_in_view():
    d = decide(clear_study())
    assert d.outcome == dec.GOLD, (d.because, d.to_run)
    assert d.inputs == ("yes", "yes", "yes", G.PRESENT, G.PASS, G.PASS)
    assert d.to_run == [] and d.provisional is None
    g = gate(d, "A", "arch_fix", "failure rate")
    assert g.verdict == G.PASS and g.low > 0 and g.against == "control"
    assert "also qualified" in d.other_fix[0]
    assert d.other_fix[1].startswith("Arch fix vs opt fix") and "Stage B" in d.other_fix[1]


def test_gold_from_three_or_four_seeds_is_not_claimed():
    """Issue 19: the arch fix 0.1% below the control on 3-4 seeds, Stage B 0/3 vs 1/4."""
    a = arms(control_a=[0.018, 0.020, 0.022, 0.021, "nonfinite"],
             arch_a=[0.0178, 0.02048, 0.023], opt_a=[0.0205, 0.0207, 0.021],
             control_b=[0.030, 0.031, 0.032, "diverged"], arch_b=[0.0178, 0.0205, 0.023],
             opt_b=[0.021, 0.022, 0.0215])
    d = decide(a)
    assert d.outcome == dec.INCOMPLETE
    loss = gate(d, "A", "arch_fix", "median loss below")
    assert loss.verdict == G.INCONCLUSIVE and loss.point == G.PASS
    assert loss.low < 0 < loss.high
    rate = gate(d, "B", "arch_fix", "failure rate")
    assert rate.verdict == G.INCONCLUSIVE and rate.point == G.PASS  # 0/3 vs 1/4: not "lower"
    assert d.provisional == dec.GOLD and "point estimates" in d.provisional_basis
    lines = [t for t in d.to_run if "inconclusive" in t]
    assert any(t.startswith("Stage A arch_fix: median loss below vs control inconclusive")
               and "seeds per arm would settle it" in t for t in lines)
    assert any(t.startswith("Stage B arch_fix: failure rate vs control-deep inconclusive")
               for t in lines)


def test_the_strategys_ten_seeds_against_the_premises_control_are_inconclusive():
    d = decide(clear_study(control_a=ok(7, 0.020, 1e-4) + ["nonfinite"] * 3,
                           arch_a=ok(10, 0.015, 1e-4), opt_a=ok(10, 0.0205, 1e-4),
                           control_b=ok(7, 0.030, 1e-4) + ["diverged"] * 3,
                           arch_b=ok(10, 0.0155, 1e-4), opt_b=ok(10, 0.021, 1e-4)))
    assert d.outcome == dec.INCOMPLETE and d.provisional == dec.GOLD
    g = gate(d, "A", "arch_fix", "failure rate")
    assert (g.verdict, g.seeds) == (G.INCONCLUSIVE, 21)
    assert "about 21 seeds per arm would settle it at the observed rates (0/10 vs 3/10)" in \
        g.settle


def test_seeds_needed_by_the_report_checked_against_a_simulation():
    """The report's seed count for an inconclusive failure-rate gate, at the observed rates
    (2/12 vs 6/12), is the count at which a simulated study settles it 80% of the time."""
    d = decide(clear_study(control_a=ok(6, 0.02, 1e-4) + ["nonfinite"] * 6,
                           arch_a=ok(10, 0.015, 1e-4) + ["nonfinite"] * 2))
    g = gate(d, "A", "arch_fix", "failure rate")
    assert g.verdict == G.INCONCLUSIVE and g.seeds is not None
    n = g.seeds
    rng = np.random.default_rng(11)
    reps = 3000

    def settled(m):
        kc, kf = rng.binomial(m, 0.5, reps), rng.binomial(m, 2 / 12, reps)
        _, lo, hi = stats.newcombe_difference(kc, m, kf, m, 0.95)
        return np.mean((lo > 0) | (hi < 0.10))

    tol = 3 * math.sqrt(0.25 / reps)
    assert settled(n) >= power.POWER - tol
    assert settled(max(1, n // 2)) < power.POWER


def test_not_reproduced_needs_the_premise_shown_absent():
    one_seed = arms(control_a=[0.02], arch_a=[0.015], opt_a=[0.02], control_b=[0.03],
                    arch_b=[0.016], opt_b=[0.03])
    d = decide(one_seed)
    assert d.outcome == dec.INCOMPLETE and d.premise == G.NOT_SETTLED
    assert any(t.startswith("premise not settled") and "7 control runs per stage" in t
               for t in d.to_run)
    ten = clear_study(control_a=ok(10, 0.02, 1e-4), control_b=ok(10, 0.03, 1e-4))
    d = decide(ten)
    assert d.outcome == dec.NOT_REPRODUCED and d.premise == G.ABSENT
    assert "upper bound 0.213" in d.because and "no fix is chosen" in d.because
    five = clear_study(control_a=ok(5, 0.02, 1e-4), control_b=ok(5, 0.03, 1e-4))
    assert decide(five).outcome == dec.INCOMPLETE


def test_a_rare_instability_is_not_the_premise():
    """A control at 1/30 per stage: the instability exists, far below the premise's 3/10."""
    d = decide(clear_study(control_a=ok(29, 0.02, 1e-4) + ["nonfinite"],
                           control_b=ok(29, 0.03, 1e-4) + ["diverged"]))
    assert d.outcome == dec.NOT_REPRODUCED
    assert "the instability exists but far below the premise's rate" in d.because


def test_point_reading_is_the_strategys_literal_one():
    """``evidence: point``: the estimates alone decide (a final outcome at three seeds)."""
    a = arms(control_a=[0.020, 0.021, 0.022, "nonfinite"], arch_a=[0.015, 0.016, 0.014],
             opt_a=[0.021, 0.022, 0.021], control_b=["diverged", 0.03, 0.031, 0.03],
             arch_b=[0.015, 0.016, 0.015], opt_b=[0.03, 0.03, 0.03])
    assert decide(a).outcome == dec.INCOMPLETE
    d = decide(a, rule=_rule(evidence="point"))
    assert d.outcome == dec.GOLD and d.evidence == "point"
    assert all("point reading" in g.reason for g in d.gates if g.kind != "limit")
    demo = dec.load_rule(dec.DEFAULT_RULE.parent / "demo.yaml")
    assert demo.point  # make demo ends with a final outcome


# --- robustness with losses ------------------------------------------------------------------
def test_unsettled_runs_counted_at_an_ordinary_loss():
    """Timed-out control runs finishing at the control's best observed loss would move its
    median to the arch fix's: GOLD is not "robust to the unsettled runs" (issue 19: robustness
    counted unsettled runs only as failures or successes, never by the loss they would bring)."""
    control_a = ok(16, 0.020, 0.0008) + ["nonfinite"] * 8 + ["timeout"] * 24  # 0.014 .. 0.026
    d = decide(clear_study(control_a=control_a))
    assert d.outcome == dec.INCOMPLETE, d.because
    assert "with them left out it is GOLD" in d.because
    assert any(t.startswith("Stage A control 'control': settle 24 run(s) (seed=24 (timeout)")
               for t in d.to_run)
    assert {o for c, o in d.cases if "A/control best" in c} != {dec.GOLD}
    assert {o for c, o in d.cases if "A/control worst" in c} == {dec.GOLD}
    # the same runs cannot move a tight margin: it stands
    d = decide(clear_study(arch_a=ok(24, 0.015, 1e-4) + ["timeout"]))
    assert d.outcome == dec.GOLD and any("it stands" in n for n in d.notes)
    assert len(d.cases) == 3


def test_four_timeouts_at_an_ordinary_loss_under_the_point_reading():
    """The issue's example read literally: 4 timeouts at the arch fix's worst loss put its
    median above the control's."""
    a = arms(control_a=[0.0195, 0.0195, 0.0195, "nonfinite"],
             arch_a=[0.014] * 4 + [0.0199] * 3 + ["timeout"] * 4,
             opt_a=[0.0196, 0.0197, 0.0198], control_b=["diverged", 0.03, 0.031, 0.03],
             arch_b=[0.015, 0.016, 0.015], opt_b=[0.0199, 0.02, 0.0201])
    point = _rule(evidence="point")
    d = decide(a, rule=point)
    assert d.outcome == dec.INCOMPLETE and "with them left out it is GOLD" in d.because
    d = decide(a, rule=_rule(evidence="point", robust_to_unsettled=False))
    assert d.outcome == dec.GOLD


def test_ok_runs_with_nan_metrics_are_not_clean_successes():
    arch_b = ok(23, 0.0155, 1e-4) + [{"loss": 0.0155, "phase_ssim": math.nan}]
    d = decide(clear_study(arch_b=arch_b))
    nf = gate(d, "B", "arch_fix", "nonfinite runs")
    assert nf.verdict == G.FAIL and "1 ok with a non-finite metric" in nf.numbers
    assert d.outcome == dec.SILVER
    assert any("seed=23 (ok, non-finite phase_ssim)" in n for n in d.notes)
    rate = gate(d, "B", "arch_fix", "failure rate")
    assert "0/23" in rate.numbers  # unsettled: out of the rate


# --- Stage B's conditions for both fixes -----------------------------------------------------
def test_grad_norm_must_stay_bounded():
    arch_b = [{"loss": v, "grad": 1e12} for v in ok(24, 0.0155, 1e-4)]
    d = decide(clear_study(arch_b=arch_b))
    g = gate(d, "B", "arch_fix", "grad norm bounded")
    assert g.verdict == G.FAIL and "24 ok run(s) above failure.grad_norm_bound" in g.reason
    assert d.outcome == dec.SILVER
    arch_b = [{"loss": v, "grad": 80.0} for v in ok(24, 0.0155, 1e-4)]  # 16x Stage A's 5
    d = decide(clear_study(arch_b=arch_b))
    assert gate(d, "B", "arch_fix", "grad norm bounded").verdict == G.FAIL
    assert d.outcome == dec.SILVER


def test_stage_b_matches_stage_a_on_every_ssim():
    """Phase SSIM 0.95 -> 0.30 at depth: the arch fix does not match Stage A."""
    arch_a = [{"loss": v, "phase_ssim": 0.95} for v in ok(24, 0.015, 1e-4)]
    arch_b = [{"loss": v, "phase_ssim": 0.30} for v in ok(24, 0.0155, 1e-4)]
    d = decide(clear_study(arch_a=arch_a, arch_b=arch_b))
    assert gate(d, "B", "arch_fix", "deep median amp_ssim").verdict == G.PASS
    assert gate(d, "B", "arch_fix", "deep median phase_ssim").verdict == G.FAIL
    assert d.outcome == dec.SILVER


def test_silver_needs_agc_to_meet_stage_b():
    """The arch fix fails; AGC has 5/10 nonfinite and +43% over its own Stage A at depth:
    both fail Stage B -> PIVOT (the premise being present)."""
    d = decide(clear_study(arch_a=ok(24, 0.025, 1e-4),
                           opt_b=ok(12, 0.0293, 1e-4) + ["nonfinite"] * 12))
    assert gate(d, "B", "opt_fix", "nonfinite runs").verdict == G.FAIL
    assert gate(d, "B", "opt_fix", "deep median best_val_loss").verdict == G.FAIL
    assert d.outcome == dec.PIVOT and "the premise is present" in d.because


def test_silver_when_agc_meets_everything():
    d = decide(clear_study(arch_a=ok(24, 0.025, 1e-4)))
    assert d.outcome == dec.SILVER
    assert d.other_fix[0].startswith("The arch fix (stable_hybrid) did not qualify: fails "
                                     "median loss below vs control (stage A)")


def test_compare_with_all_names_each_arm_compared_against():
    a = clear_study(opt_a=ok(24, 0.012, 1e-4), opt_b=ok(24, 0.0125, 1e-4))  # AGC lowest
    d = decide(a, rule=_rule(compare_with="all"))
    assert d.outcome == dec.SILVER
    assert gate(d, "A", "arch_fix", "median loss below", "opt_fix").verdict == G.FAIL
    assert gate(d, "A", "arch_fix", "failure rate", "opt_fix").verdict == G.INCONCLUSIVE
    assert decide(a).outcome == dec.GOLD


# --- degenerate inputs -----------------------------------------------------------------------
def test_stage_b_without_a_control_is_a_report_not_a_key_error():
    a = clear_study()
    del a[("B", "control")]
    d = decide(a)
    assert d.outcome == dec.INCOMPLETE
    assert "Stage B: no arm for role control (arch=hybrid, clip=none)" in d.to_run
    assert gate(d, "B", "arch_fix", "failure rate").verdict == G.UNTESTABLE


def test_no_control_anywhere_and_no_runs_at_all():
    a = clear_study()
    del a[("A", "control")], a[("B", "control")]
    d = decide(a)
    assert d.outcome == dec.INCOMPLETE and d.premise == G.NOT_SETTLED
    assert dec.decide([], RULE).outcome == dec.INCOMPLETE


def test_summary_rows_without_runs_see_counts_only():
    rows, _, protocols = study(clear_study())
    for r in rows:
        r.update(n_ok=10, n_instability=8 if r["arm_id"].startswith("control") else 0,
                 n_nonfinite=0)
    d = dec.decide(rows, RULE, protocols=protocols)
    assert d.outcome == dec.INCOMPLETE
    assert gate(d, "A", "arch_fix", "median loss below").verdict == G.UNTESTABLE


def test_conflicting_duplicates_make_it_incomplete():
    rows, runs, protocols = study(clear_study())
    runs[3]["duplicate_conflict"] = "stage_a/x/seed=3 and backup/x/seed=3 differ (status)"
    d = dec.decide(rows, RULE, protocols=protocols, runs=runs)
    assert d.outcome == dec.INCOMPLETE and d.inputs[1] == "no"
    assert any("recorded twice with different results" in t and "seed=3" in t
               for t in d.to_run)


# --- protocol against the study's ------------------------------------------------------------
def _protocols(change):
    rows, runs, protocols = study(clear_study())
    for key, proto in protocols.items():
        change(key, proto)
    return rows, runs, protocols


def test_a_stage_b_sweep_at_depth_4_is_not_stage_b():
    def shallow(key, proto):
        if key[0] == "B":
            proto.update({"depth": 4, "arch.fno_blocks": 4})

    rows, runs, protocols = _protocols(shallow)
    d = dec.decide(rows, RULE, protocols=protocols, runs=runs)
    assert d.outcome == dec.INCOMPLETE and d.inputs[2] == "no"
    assert any("departs from the stage's declared protocol: depth: 4 (run) vs 8 (declared)" in m
               for m in d.study_mismatches)
    assert any("Stage B is not deeper than Stage A" in m for m in d.study_mismatches)


def test_both_stages_off_the_study_protocol():
    """Both stages at 3 epochs on N=32 (the demo's sweeps under the study's rule)."""
    def demo_like(key, proto):
        proto.update({"trainer.max_epochs": 3, "data.N": 32})

    rows, runs, protocols = _protocols(demo_like)
    d = dec.decide(rows, RULE, protocols=protocols, runs=runs)
    assert d.outcome == dec.INCOMPLETE and d.provisional == dec.GOLD
    text = " ".join(d.to_run)
    assert "data.N: 32 (run) vs 64 (declared)" in text
    assert "trainer.max_epochs: 3 (run) vs 50 (declared)" in text
    # a demonstration rule notes it; allow_protocol_mismatch lets it go ahead
    d = dec.decide(rows, _rule(demonstration=True), protocols=protocols, runs=runs)
    assert d.outcome == dec.GOLD and any(n.startswith("demonstration rule") for n in d.notes)
    d = dec.decide(rows, _rule(allow_protocol_mismatch=True), protocols=protocols, runs=runs)
    assert d.outcome == dec.GOLD and any("allow_protocol_mismatch" in n for n in d.notes)


@pytest.mark.parametrize("role", ["control", "arch_fix", "opt_fix"])
def test_every_arm_is_compared_across_stages(role):
    """SILVER with Stage B at another lr is no longer possible: every role arm is checked."""
    def other_lr(key, proto):
        if key[0] == "B" and key[2].startswith(role):
            proto["trainer.lr"] = 0.01

    rows, runs, protocols = _protocols(other_lr)
    d = dec.decide(rows, RULE, protocols=protocols, runs=runs)
    assert d.outcome == dec.INCOMPLETE
    assert any(m.startswith(f"{role} Stage A vs Stage B: trainer.lr") for m in d.mismatches)


def test_arms_of_a_stage_share_their_protocol():
    def agc_epochs(key, proto):
        if key == ("A", "stage_a", "opt_fix"):
            proto["arch.hidden_channels"] = 16

    rows, runs, protocols = _protocols(agc_epochs)
    d = dec.decide(rows, RULE, protocols=protocols, runs=runs)
    assert d.outcome == dec.INCOMPLETE
    assert "Stage A control vs 'opt_fix': arch.hidden_channels: 32 (control) vs 16 (opt_fix)" \
        in d.mismatches


def test_a_missing_manifest_makes_the_protocol_untestable():
    rows, runs, protocols = study(clear_study())
    protocols[("A", "stage_a", "arch_fix")] = ArmProtocol(
        declared("A", "arch_fix"), no_manifest=(3, 5))
    d = dec.decide(rows, RULE, protocols=protocols, runs=runs)
    assert d.outcome == dec.INCOMPLETE and d.inputs[2] == "untestable"
    assert any("seed(s) 3, 5 have records but no readable manifest" in t for t in d.to_run)
    protocols[("A", "stage_a", "arch_fix")] = None  # nothing readable at all
    assert dec.decide(rows, RULE, protocols=protocols, runs=runs).inputs[2] == "untestable"
    assert dec.decide(rows, RULE, runs=runs).inputs[2] == "untestable"  # none given
    # an arm whose runs never started has no protocol, and no records: just unsettled
    protocols[("A", "stage_a", "arch_fix")] = ArmProtocol()
    assert dec.decide(rows, RULE, protocols=protocols, runs=runs).inputs[2] == "yes"


def test_seeds_of_one_arm_under_different_protocols():
    rows, runs, protocols = study(clear_study())
    p0 = declared("A", "control")
    protocols[("A", "stage_a", "control")] = ArmProtocol(
        p0, variants=(((0, 1, 2), p0), ((3,), {**p0, "trainer.lr": 0.01})))
    d = dec.decide(rows, RULE, protocols=protocols, runs=runs)
    assert d.outcome == dec.INCOMPLETE
    assert any("seeds 0, 1, 2 and seeds 3 ran under different protocols: trainer.lr" in m
               for m in d.mismatches)


def test_the_declared_protocols_are_what_the_presets_compose():
    """conf/decision/default.yaml's stages are what `+experiment=stage_a` / `stage_b` compose,
    and demo.yaml's what the demo composes."""
    from omegaconf import OmegaConf

    from ptychostab import config as C
    from ptychostab.analysis.protocol import protocol_of

    demo = dec.load_rule(dec.DEFAULT_RULE.parent / "demo.yaml")
    for rule, presets in ((RULE, ("stage_a", "stage_b")), (demo, ("demo", "demo_b"))):
        for stage, preset in zip(("A", "B"), presets, strict=True):
            cfg = OmegaConf.to_container(C.compose([f"+experiment={preset}"]), resolve=True,
                                         enum_to_str=True)
            proto = {**protocol_of(cfg), "data.name": cfg["data"]["name"]}
            spec = rule.stages[stage]
            from ptychostab.analysis.protocol import against_declared

            assert against_declared(proto, spec.depth, spec.protocol) == [], (preset, stage)
            assert spec.sweep_contains in cfg["sweep"]
