"""Issue 19's families from sweep folders (hand-made records, no training): every manifest of an
arm read, duplicates across folders, sweeps outside the study, the depth fallback, the clip
sweep's comparison, and what the report says first."""

import json
import math
import shutil

import pytest
import yaml

from ptychostab.analysis import clipsweep
from ptychostab.analysis.decide import DEFAULT_RULE, load_rule, rule_from_dict
from ptychostab.analysis.pipeline import aggregate
from ptychostab.report.render import render
from ptychostab.runs import records


def losses(center, n, step=1e-4):
    return [round(center + step * (i - (n - 1) / 2), 10) for i in range(n)]


def study(root, f, **over):
    """10 seeds per arm: the control fails 5/10 in each stage, both fixes never; the arch fix
    25% below the control; AGC +2.5% over it; each fix within 4% of itself at depth."""
    arms = dict(
        control_a=losses(0.020, 5) + ["nonfinite"] * 5, arch_a=losses(0.015, 10),
        opt_a=losses(0.0205, 10), control_b=losses(0.030, 5) + ["diverged"] * 5,
        arch_b=losses(0.0155, 10), opt_b=losses(0.021, 10))
    arms.update(over)
    a, b = root / "stage_a", root / "stage_b"
    for key, arm in (("control", f.CONTROL), ("arch", f.ARCH_FIX), ("opt", f.OPT_FIX)):
        f.write_arm(a, arm, arms[f"{key}_a"])
        f.write_arm(b, f.at_depth(arm, 8), arms[f"{key}_b"])
    return [a, b]


def _edit_manifest(run, change):
    data = json.loads((run / records.MANIFEST).read_text())
    change(data)
    records.atomic_write_json(run / records.MANIFEST, data)


def test_a_clear_study_on_disk_is_gold(tmp_path, factory):
    r = aggregate(study(tmp_path, factory), plot_inputs=False)
    assert r.decision.outcome == "GOLD", (r.decision.because, r.decision.to_run)
    text = render(r)
    assert "| Stage A | arch_fix | failure rate | hybrid | +0.5 [+0.108, +0.769] | **pass** |" \
        in text
    assert "### The other fix" in text and "also qualified" in text
    assert "Premise: **present**" in text


def test_a_backup_copy_does_not_double_the_seeds(tmp_path, factory):
    """Issue 19: a backup copy of the sweep folders passed to the aggregator doubled every n
    and turned INCOMPLETE into GOLD."""
    dirs = study(tmp_path, factory, control_a=losses(0.020, 3) + ["nonfinite"] * 2,
                 arch_a=losses(0.015, 5), opt_a=losses(0.0205, 5))
    assert aggregate(dirs, plot_inputs=False).decision.outcome == "INCOMPLETE"
    backup = tmp_path / "stage_a_backup"
    shutil.copytree(dirs[0], backup)
    r = aggregate([*dirs, backup], plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE"
    a = r.summary[(r.summary["stage"] == "A") & (r.summary["role"] == "control")].iloc[0]
    assert (a["n_planned"], a["n_done"]) == (5, 5)  # distinct seeds
    assert any("found 2 times (stage_a/" in w and "stage_a_backup/" in w
               and "counted once" in w for w in r.warnings)


def test_a_copy_with_another_result_makes_it_incomplete(tmp_path, factory):
    dirs = study(tmp_path, factory)
    copy = tmp_path / "stage_a_copy"
    shutil.copytree(dirs[0], copy)
    run = copy / factory.arm_id_of(factory.ARCH_FIX) / "seed=3"
    res = json.loads((run / records.RESULT).read_text())
    res["metrics"]["best_val_loss"] = 0.5
    records.atomic_write_json(run / records.RESULT, res)
    r = aggregate([*dirs, copy], plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE" and r.decision.inputs[1] == "no"
    assert r.decision.provisional == "GOLD"
    assert any("seed=3" in c and "different results" in c for c in r.decision.conflicts)
    assert "### Records found twice with different results" in render(r)


def test_every_manifest_of_an_arm_is_read(tmp_path, factory):
    dirs = study(tmp_path, factory)
    arm_dir = dirs[0] / factory.arm_id_of(factory.ARCH_FIX)
    for seed in (7, 8):
        _edit_manifest(arm_dir / f"seed={seed}",
                       lambda d: d["config"]["trainer"].update(lr=0.01))
    r = aggregate(dirs, plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE"
    assert any("seeds 0, 1, 2, 3, 4, 5, 6, 9 and seeds 7, 8 ran under different protocols: "
               "trainer.lr" in m for m in r.decision.mismatches)


def test_records_without_a_manifest_make_the_protocol_untestable(tmp_path, factory):
    """Issue 19: a missing manifest counted as "protocol shared = yes"."""
    dirs = study(tmp_path, factory)
    (dirs[1] / factory.arm_id_of(factory.at_depth(factory.OPT_FIX, 8)) / "seed=2"
     / records.MANIFEST).unlink()
    r = aggregate(dirs, plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE" and r.decision.inputs[2] == "untestable"
    assert any("seed(s) 2 have records but no readable manifest" in t for t in r.decision.to_run)


def test_a_never_started_run_is_just_unsettled(tmp_path, factory):
    dirs = study(tmp_path, factory, arch_a=losses(0.015, 10) + [None])
    factory.write_plan(dirs[0], [(factory.ARCH_FIX, s) for s in range(11)])
    r = aggregate(dirs, plot_inputs=False)
    assert r.decision.inputs[2] == "yes"
    assert r.decision.outcome == "GOLD" and any("it stands" in n for n in r.decision.notes)


def test_a_stage_b_sweep_at_depth_4_gets_no_real_verdict(tmp_path, factory):
    a = tmp_path / "stage_a"
    b = tmp_path / "stage_b"
    for arm, outs in ((factory.CONTROL, losses(0.02, 5) + ["nonfinite"] * 5),
                      (factory.ARCH_FIX, losses(0.015, 10)), (factory.OPT_FIX,
                                                              losses(0.0205, 10))):
        factory.write_arm(a, arm, outs)
        factory.write_arm(b, arm, outs)  # "stage_b", but at depth 4
    r = aggregate([a, b], plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE"
    assert any("depth: 4 (run) vs 8 (declared)" in m for m in r.decision.study_mismatches)


def test_the_demo_sweeps_under_the_study_rule(tmp_path, factory):
    """Both stages at 3 epochs on N=32: no real verdict under the study's rule."""
    tiny = {"data.N": 32, "data.size": 96, "trainer.max_epochs": 3}
    dirs = study(tmp_path, factory)
    for man in tmp_path.glob("stage_*/*/seed=*/manifest.json"):
        _edit_manifest(man.parent, lambda d: [
            d["config"][k.split(".")[0]].update({k.split(".")[1]: v}) for k, v in tiny.items()])
    r = aggregate(dirs, plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE" and r.decision.provisional == "GOLD"
    assert any("data.N: 32 (run) vs 64 (declared)" in t for t in r.decision.to_run)


def test_outside_the_study_never_enters_a_stage(tmp_path, factory):
    """Issue 19: `seed_control_rerun` entered Stage A through the depth fallback."""
    dirs = study(tmp_path, factory)
    rerun = tmp_path / "seed_control_rerun"
    factory.write_arm(rerun, {**factory.CONTROL, "clip": "norm", "clip_value": 1.0,
                              "label": "hybrid_norm1"}, [0.5], config={"outside_study": True})
    r = aggregate([*dirs, rerun], plot_inputs=False)
    assert set(r.runs.loc[r.runs["sweep"] == "seed_control_rerun", "stage"]) == {"outside"}
    assert r.outside == ["seed_control_rerun"] and r.staged_by_depth == []
    assert r.decision.outcome == "GOLD"
    text = render(r)
    assert "> Outside the study (`outside_study: true`" in text
    assert "## Outside the study" in text
    # without the declaration the depth fallback would have put it in Stage A, and said so
    plain = tmp_path / "other_probe"
    factory.write_arm(plain, {**factory.CONTROL, "clip": "norm", "clip_value": 1.0,
                              "label": "hybrid_norm1"}, [0.5])
    r = aggregate([*dirs, plain], plot_inputs=False)
    assert r.staged_by_depth == ["`other_probe` -> Stage A (depth 4)"]
    assert "> Staged by depth (no stage name in the sweep's name): `other_probe`" in render(r)


def test_the_seed_control_preset_is_outside_the_study():
    from ptychostab import config as C

    cfg = C.compose(["+experiment=seed_stage_a_control"])
    assert cfg.outside_study is True and cfg.sweep == "seed_control_rerun"
    assert C.compose([]).outside_study is False


def test_stage_b_without_a_control_gets_a_report(tmp_path, factory):
    dirs = study(tmp_path, factory)
    shutil.rmtree(dirs[1] / factory.arm_id_of(factory.at_depth(factory.CONTROL, 8)))
    r = aggregate(dirs, plot_inputs=False)
    assert r.decision.outcome == "INCOMPLETE"
    assert "Stage B: no arm for role control (arch=hybrid, clip=none)" in r.decision.to_run
    assert "## Decision: **INCOMPLETE**" in render(r)


def test_ok_runs_with_nan_metrics_are_named(tmp_path, factory):
    dirs = study(tmp_path, factory)
    run = dirs[1] / factory.arm_id_of(factory.at_depth(factory.ARCH_FIX, 8)) / "seed=4"
    res = json.loads((run / records.RESULT).read_text())
    res["metrics"]["phase_ssim"] = None
    records.atomic_write_json(run / records.RESULT, res)
    r = aggregate(dirs, plot_inputs=False)
    assert r.decision.outcome == "SILVER"  # the arch fix has a nonfinite run in Stage B
    assert any(w.startswith("1 ok run(s) with a non-finite loss or SSIM")
               and "stage_b/stable_hybrid/seed=4 (phase_ssim)" in w for w in r.warnings)


# --- what the report says first --------------------------------------------------------------
def _rule(**changes):
    return rule_from_dict({**yaml.safe_load(DEFAULT_RULE.read_text()), **changes}, name="x")


def test_first_lines_say_what_kind_of_reading_this_is(tmp_path, factory):
    dirs = study(tmp_path, factory)
    text = render(aggregate(dirs, plot_inputs=False, rule=_rule(evidence="point")))
    assert text.splitlines()[2].startswith("> **POINT READING** (`evidence: point`)")
    text = render(aggregate(dirs, plot_inputs=False, rule=_rule(allow_protocol_mismatch=True)))
    assert text.splitlines()[2].startswith("> **Protocol mismatches allowed**")
    demo = load_rule(DEFAULT_RULE.parent / "demo.yaml")
    lines = render(aggregate(dirs, plot_inputs=False, rule=demo)).splitlines()
    assert lines[2].startswith("> **DEMONSTRATION SCALE.**")
    assert lines[4].startswith("> **POINT READING** of a demonstration")


def test_a_test_run_says_so(tmp_path, factory):
    """The README's test-run recipe: nimgs 1/1 under its own sweep name."""
    d = tmp_path / "stage_a_test"
    for arm in (factory.CONTROL, factory.ARCH_FIX, factory.OPT_FIX):
        factory.write_arm(d, arm, [0.02, 0.021, 0.022],
                          config={"data.nimgs_train": 1, "data.nimgs_test": 1})
    r = aggregate([d], plot_inputs=False)
    text = render(r)
    assert "> **TEST RUN** (Stage A: one train and one test image" in text
    assert r.decision.outcome == "INCOMPLETE"
    assert any("data.nimgs_train: 1 (run) vs 2 (declared)" in m
               for m in r.decision.study_mismatches)


# --- the clip sweep --------------------------------------------------------------------------
def _clip(root, f, values=((1, [0.02, 0.021, 0.019]), (10, [0.02, "nonfinite", 0.021]),
                           (100, ["nonfinite", "diverged", 0.02])), **kw):
    clip = root / "clip_sweep"
    for value, outs in values:
        arm = {**f.CONTROL, "clip": "norm", "clip_value": value, "label": f"hybrid_norm{value}"}
        f.write_arm(clip, arm, outs, **kw)
    return clip


def test_clip_sweep_compared_under_the_same_protocol_only(tmp_path, factory):
    dirs = study(tmp_path, factory)
    r = aggregate([*dirs, _clip(tmp_path, factory)], plot_inputs=False)
    assert r.clip.compared and r.decision.outcome == "GOLD"
    assert "- Stage A control failure rate: 0.5 lies within the clipped arms' spread" in \
        render(r)
    deep = tmp_path / "deep"
    deep.mkdir()
    r = aggregate([*dirs, _clip(deep, factory, config={"depth": 8, "arch.fno_blocks": 8})],
                  plot_inputs=False)
    assert not r.clip.compared
    assert "depth" in r.clip.not_compared[0]
    assert "- Not compared with the Stage A control: hybrid_norm1 differs from the Stage A " \
           "control in arch.fno_blocks, depth" in render(r)


def test_kendall_counts_finished_runs_only(tmp_path, factory):
    """Issue 19: unfinished runs counted as successes in the trend."""
    dirs = study(tmp_path, factory)
    clip = _clip(tmp_path, factory, values=((1, [0.02, 0.02, "timeout", "oom"]),
                                            (100, ["nonfinite", "diverged", "timeout"])))
    r = aggregate([*dirs, clip], plot_inputs=False)
    assert r.clip.n_finished == 4
    tau, _, n = clipsweep.kendall(r.runs)
    assert n == 4 and tau == pytest.approx(1.0)
    assert "over n = 4 finished runs (ok and instability" in render(r)


def test_within_the_clipped_spread_uses_intervals_and_is_inclusive():
    assert clipsweep.spread_of([0.1, 0.2, math.nan], [0.5, 0.7, math.nan]) == (0.1, 0.7)
    assert clipsweep.within(0.7, (0.1, 0.7)) is True  # on the edge: within
    assert clipsweep.within(0.1, (0.1, 0.7)) is True
    assert clipsweep.within(0.7000001, (0.1, 0.7)) is False
    assert clipsweep.within(math.nan, (0.1, 0.7)) is None
    assert clipsweep.within(0.5, (math.nan, math.nan)) is None
