"""Whole sweeps of run records (the run-record contract) -> outcome and report: degenerate
sweeps, protocol mismatch from manifests, oom/exception beside the rate, the clip sweep.

The small studies here (3-4 seeds per arm) settle nothing at 95%: where a test is about
something else than the uncertainty, it reads them with the strategy's point reading
(``POINT``); test_verdict_uncertainty.py and test_verdict_files.py hold the interval families.
"""

import json

import pytest
import yaml

from ptychostab.analysis import protocol as P
from ptychostab.analysis.decide import DEFAULT_RULE, rule_from_dict
from ptychostab.analysis.pipeline import aggregate
from ptychostab.report.outputs import write_outputs
from ptychostab.report.render import render
from ptychostab.runs import records

POINT = rule_from_dict({**yaml.safe_load(DEFAULT_RULE.read_text()), "evidence": "point"},
                       name="point")


def _study(root, f, control_a=("nonfinite", 0.02, 0.021, 0.022), extra=None):
    a, b = root / "stage_a", root / "stage_b"
    f.write_arm(a, f.CONTROL, list(control_a))
    f.write_arm(a, f.ARCH_FIX, [0.015, 0.016, 0.014])
    f.write_arm(a, f.OPT_FIX, [0.021, 0.022, 0.021])
    f.write_arm(b, f.at_depth(f.CONTROL, 8), ["diverged", 0.03, 0.031, 0.03])
    f.write_arm(b, f.at_depth(f.ARCH_FIX, 8), [0.015, 0.016, 0.015])
    f.write_arm(b, f.at_depth(f.OPT_FIX, 8), [0.03, 0.03, 0.03])
    return [a, b]


def test_gold_from_records_and_evidence_table(tmp_path, factory):
    dirs = _study(tmp_path, factory)
    run = dirs[0] / factory.arm_id_of(factory.CONTROL) / "seed=0"
    (run / "run.log").write_text("log\n")
    r = aggregate(dirs, plot_inputs=False, rule=POINT)
    write_outputs(r, tmp_path / "rep", plots=False)
    assert r.decision.outcome == "GOLD"
    text = (tmp_path / "rep" / "report.md").read_text()
    first = text.index("| hybrid | 0 | nonfinite (instability) |")
    assert first < text.index("| hybrid | 1 | ok (ok) |")  # failed runs first
    aid = factory.arm_id_of(factory.CONTROL)
    assert f"[run.log](../stage_a/{aid}/seed=0/run.log)" in text


@pytest.mark.parametrize("kind", ["oom", "exception"])
def test_oom_and_exception_are_beside_the_rate(tmp_path, factory, kind):
    dirs = _study(tmp_path, factory, control_a=("nonfinite", 0.02, 0.021, 0.022, kind))
    r = aggregate(dirs, plot_inputs=False, rule=POINT)
    c = r.summary[(r.summary["stage"] == "A") & (r.summary["role"] == "control")].iloc[0]
    assert (c["n_instability"], c["n_done"], c[f"n_{kind}"]) == (1, 4, 1)
    assert c["failure_rate"] == 0.25
    assert r.decision.outcome == "GOLD" and any("it stands" in n for n in r.decision.notes)


def test_protocol_mismatch_from_manifests(tmp_path, factory):
    dirs = _study(tmp_path, factory)
    for man in (dirs[0] / factory.arm_id_of(factory.OPT_FIX)).glob("seed=*/manifest.json"):
        data = json.loads(man.read_text())
        data["config"]["trainer"]["max_epochs"] = 20
        records.atomic_write_json(man, data)
    r = aggregate(dirs, plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE" and r.decision.provisional == "GOLD"
    assert "trainer.max_epochs: 50 (hybrid) vs 20 (hybrid+agc0.01)" in render(r)


@pytest.mark.parametrize("outcomes", [
    ["nonfinite", "diverged", "collapsed"],  # all failed
    [None, None, None],  # none finished (planned only)
    [0.02],  # one run
])
def test_degenerate_sweeps_get_a_report(tmp_path, factory, outcomes):
    d = tmp_path / "stage_a"
    factory.write_plan(d, [(factory.CONTROL, s) for s in range(len(outcomes))])
    factory.write_arm(d, factory.CONTROL, outcomes)
    r = aggregate([d])
    write_outputs(r, plots=True)
    for name in ("runs.csv", "summary.csv", "report.md"):
        assert (d / name).exists()
    assert r.decision.outcome == "INCOMPLETE"
    if outcomes[0] is None:
        assert "0/0 = n/a" in (d / "report.md").read_text()


def test_no_finite_loss_anywhere_and_interrupted_runs(tmp_path, factory):
    d = tmp_path / "stage_a"
    factory.write_run(d, factory.CONTROL, 0, "ok", loss=None)
    factory.write_run(d, factory.CONTROL, 1, "interrupted", fail_epoch=3)
    r = aggregate([d])
    write_outputs(r, plots=True)
    assert (d / "report.md").exists() and r.decision.outcome == "INCOMPLETE"
    assert "1 interrupted run(s)" in (d / "report.md").read_text()


def test_clip_sweep_section(tmp_path, factory):
    dirs = _study(tmp_path, factory)
    clip = tmp_path / "clip_sweep"
    for value, outs in ((1, [0.02, 0.02, 0.02]), (10, [0.02, "nonfinite", 0.02]),
                        (100, ["nonfinite", "diverged", 0.02])):
        arm = {**factory.CONTROL, "clip": "norm", "clip_value": value,
               "label": f"hybrid_norm{value}"}
        factory.write_arm(clip, arm, outs)
    r = aggregate([*dirs, clip], plot_inputs=False, rule=POINT)
    write_outputs(r, tmp_path / "rep", plots=False)
    text = (tmp_path / "rep" / "report.md").read_text()
    assert set(r.summary[r.summary["sweep"] == "clip_sweep"]["stage"]) == {"clip"}
    assert r.decision.outcome == "GOLD"  # the clip sweep does not enter the outcome
    assert "## Clip sweep" in text and "Not part of the GOLD/SILVER/PIVOT rule" in text
    assert "| none (Stage A control hybrid) |" in text
    assert "Kendall's tau-b = +0." in text


def test_protocol_key_lists_mirror_identity():
    from ptychostab import identity

    assert P.IDENTITY_KEYS == identity.IDENTITY_KEYS
    assert P.RUN_ONLY_LEAVES == identity.RUN_ONLY_LEAVES


def test_demo_rule_report_says_demonstration(tmp_path, factory):
    from ptychostab.analysis.decide import DEFAULT_RULE, load_rule

    dirs = _study(tmp_path, factory)
    rule = load_rule(DEFAULT_RULE.parent / "demo.yaml")
    text = render(aggregate(dirs, plot_inputs=False, rule=rule))
    assert "DEMONSTRATION SCALE" in text.splitlines()[2]
    assert "conf/decision/demo.yaml" in text.splitlines()[2]
