"""Scanning sweep folders: statuses, plan join, damaged and missing records."""

import json
import math

import pytest

from ptychostab.analysis.collect import collect, run_row
from ptychostab.runs import records


def _row(runs, arm_id, seed):
    sel = runs[(runs["arm_id"] == arm_id) & (runs["seed"] == seed)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


@pytest.fixture
def sweep(tmp_path, factory):
    """Three arms x 3 seeds planned; one planned run never started."""
    d = tmp_path / "stage_a"
    arms = [factory.CONTROL, factory.ARCH_FIX, factory.OPT_FIX]
    factory.write_plan(d, [(a, s) for a in arms for s in range(3)])
    factory.write_arm(d, factory.CONTROL, [0.02, "nonfinite", None])
    factory.write_arm(d, factory.ARCH_FIX, [0.01, 0.012, 0.011])
    factory.write_arm(d, factory.OPT_FIX, [0.03, "diverged", 0.031])
    return d


def test_one_row_per_planned_run_including_missing(sweep, factory):
    c = collect([sweep])
    assert len(c.runs) == 9
    counts = c.runs["status"].value_counts().to_dict()
    assert counts == {"ok": 6, "nonfinite": 1, "diverged": 1, "missing": 1}
    missing = _row(c.runs, factory.arm_id_of(factory.CONTROL), 2)
    assert missing["category"] == "not final" and not missing["started"]
    assert missing["problem"] == "planned, no run folder"
    assert missing["arm_label"] == "hybrid" and missing["arch"] == "hybrid"  # from siblings
    assert c.runs["in_plan"].all() and c.problems == []


def test_fields_of_ok_and_failed_runs(sweep, factory):
    runs = collect([sweep]).runs
    ok = _row(runs, factory.arm_id_of(factory.OPT_FIX), 0)
    assert ok["status"] == "ok" and ok["best_val_loss"] == 0.03
    assert ok["final_val_loss"] == pytest.approx(0.033) and ok["best_ckpt_amp_ssim"] == 0.97
    assert ok["clip_value"] == 0.01 and ok["depth"] == 4 and ok["clip"] == "agc"
    assert (ok["event"], ok["tte_epoch"], ok["tte_s"]) == (False, 50, 505.0)
    assert ok["git_commit"] == "c0ffee0" and ok["git_dirty"] is False
    assert ok["val_loss_name"] == "mae_val_loss" and ok["params_real"] == 1006
    bad = _row(runs, factory.arm_id_of(factory.OPT_FIX), 1)  # diverged at epoch 11
    assert bad["category"] == "instability" and bad["failure_kind"] == "diverged"
    assert (bad["failure_epoch"], bad["failure_step"], bad["failure_wall_s"]) == (11, 1107, 113)
    assert (bad["event"], bad["tte_epoch"], bad["tte_s"]) == (True, 11, 113.0)
    assert math.isnan(bad["best_val_loss"])


def test_damaged_records_are_counted_not_dropped(tmp_path, factory):
    d = tmp_path / "sweep"
    arm = factory.CONTROL
    aid = factory.arm_id_of(arm)
    truncated = factory.write_run(d, arm, 0)
    text = (truncated / records.RESULT).read_text()
    (truncated / records.RESULT).write_text(text[: len(text) // 2])
    wrong = factory.write_run(d, arm, 1)
    data = json.loads((wrong / records.RESULT).read_text())
    (wrong / records.RESULT).write_text(json.dumps({**data, "schema_version": 99}))
    odd = factory.write_run(d, arm, 2)
    (odd / records.RESULT).write_text(json.dumps({**data, "status": "exploded"}))
    factory.write_run(d, arm, 3, result=False)  # started, no result: running or killed
    (d / aid / "seed=4").mkdir()  # empty folder
    bad_manifest = factory.write_run(d, arm, 5, loss=0.5)
    (bad_manifest / records.MANIFEST).write_text("{not json")
    runs = collect([d]).runs
    assert len(runs) == 6
    st = {int(r["seed"]): r for _, r in runs.iterrows()}
    assert st[0]["status"] == "corrupt" and "corrupt result.json" in st[0]["problem"]
    assert st[1]["status"] == "corrupt" and "schema_version 99" in st[1]["problem"]
    assert st[2]["status"] == "corrupt" and "exploded" in st[2]["problem"]
    assert st[3]["status"] == "missing" and st[3]["started"]
    assert "running or killed" in st[3]["problem"]
    assert st[3]["tte_epoch"] == 50 and st[3]["tte_s"] == 500.0  # censored at history's end
    assert st[4]["status"] == "missing" and st[4]["problem"] == "empty run folder"
    assert st[5]["status"] == "ok" and "corrupt manifest.json" in st[5]["problem"]
    assert st[5]["best_val_loss"] == 0.5 and st[5]["arch"] == "hybrid"  # result's arm copy
    assert set(runs["category"]) == {"not final", "ok"}


def test_without_plan_the_records_are_the_plan(tmp_path, factory):
    d = tmp_path / "noplan"
    factory.write_arm(d, factory.ARCH_FIX, [0.1, "oom"])
    runs = collect([d]).runs
    assert runs["status"].tolist() == ["ok", "oom"] and runs["in_plan"].all()
    assert runs["sweep"].unique().tolist() == ["noplan"]


def test_run_outside_plan_is_flagged(sweep, factory):
    factory.write_run(sweep, factory.ARCH_FIX, 7)
    runs = collect([sweep]).runs
    extra = _row(runs, factory.arm_id_of(factory.ARCH_FIX), 7)
    assert not extra["in_plan"] and len(runs) == 10


def test_timeout_is_incomplete_and_censored(tmp_path, factory):
    d = tmp_path / "s"
    run = factory.write_run(d, factory.CONTROL, 0, "timeout", fail_epoch=None, epochs=30)
    row = run_row(run)
    assert row["status"] == "timeout" and not row["event"]
    assert collect([d]).runs.iloc[0]["category"] == "not final"


def test_empty_and_absent_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    c = collect([tmp_path / "empty", tmp_path / "nowhere"])
    assert c.runs.empty and "status" in c.runs.columns
    assert c.problems == [f"{tmp_path / 'nowhere'}: not a folder"]


def test_plan_ids_are_text_and_damaged_plan_falls_back(tmp_path, factory):
    d = tmp_path / "s"
    d.mkdir()
    (d / "plan.csv").write_text("sweep,arm_id,arm_label,seed,overrides,clip_value\n"
                                "s,00123,lbl,0,x=1,0.1\ns,00123,lbl,1,x=1,0.1\n")
    runs = collect([d]).runs
    assert runs["arm_id"].tolist() == ["00123", "00123"]
    assert runs["seed"].tolist() == [0, 1] and runs["clip_value"].tolist() == [0.1, 0.1]
    assert (runs["status"] == "missing").all() and runs["arm_label"].iloc[0] == "lbl"
    (d / "plan.csv").write_text("what,ever\n1,2\n")
    factory.write_run(d, factory.CONTROL, 0)
    c = collect([d])
    assert len(c.runs) == 1 and "lacks arm_id/seed" in c.problems[0]


def test_grad_norm_block_and_dry_run_columns(tmp_path, factory):
    d = tmp_path / "s"
    run = factory.write_run(d, factory.OPT_FIX, 0)
    res = json.loads((run / records.RESULT).read_text())
    res["grad_norm"] = {"pre_p99": 3.0, "pre_max": 9.0, "grad_norm_post_max": 0.5}
    (run / records.RESULT).write_text(json.dumps(res))
    factory.write_run(d, factory.OPT_FIX, 1)
    factory.write_plan(d, [(factory.OPT_FIX, 0), (factory.OPT_FIX, 1)])
    plan = (d / "plan.csv").read_text().splitlines()
    plan = [plan[0] + ",params_real,memory_gb_estimate,est_minutes,status,trainer.lr"] + [
        line + ",1234,0.5,3.0,todo,0.001" for line in plan[1:]]
    (d / "plan.csv").write_text("\n".join(plan) + "\n")
    c = collect([d])
    r0, r1 = c.runs.iloc[0], c.runs.iloc[1]
    assert (r0["grad_norm_pre_p99"], r0["grad_norm_pre_max"]) == (3.0, 9.0)
    assert r0["grad_norm_post_max"] == 0.5 and math.isnan(r0["grad_norm_pre_median"])
    assert r1["grad_norm_pre_median"] == 1.2 and r1["grad_norm_clip_fraction"] == 0.0
    assert r0["trainer.lr"] == 0.001 and "trainer.lr" in c.arm_columns
    assert not {"status", "params_real", "est_minutes"} & set(c.arm_columns)
    assert r0["params_real"] == 1006 and r0["status"] == "ok"


def test_the_same_run_in_two_folders_counts_once(tmp_path, factory):
    """A copy of a sweep folder (same manifest sweep, arm id and seed): one row, a warning
    naming both; different results: one row marked ``duplicate_conflict``."""
    import shutil

    d = tmp_path / "stage_a"
    factory.write_arm(d, factory.CONTROL, [0.02, "nonfinite"])
    shutil.copytree(d, tmp_path / "copy")
    c = collect([d, tmp_path / "copy"])
    assert len(c.runs) == 2 and c.runs["duplicate_conflict"].isna().all()
    assert c.runs["duplicate_of"].tolist() == ["copy/340ca259f1/seed=0",
                                               "copy/340ca259f1/seed=1"]
    assert any("found 2 times (stage_a/340ca259f1/seed=0 and copy/340ca259f1/seed=0)" in p
               and "counted once" in p for p in c.problems)
    run = tmp_path / "copy" / factory.arm_id_of(factory.CONTROL) / "seed=0"
    res = json.loads((run / records.RESULT).read_text())
    res["metrics"]["best_val_loss"] = 0.03
    (run / records.RESULT).write_text(json.dumps(res))
    c = collect([d, tmp_path / "copy"])
    conflict = c.runs.loc[c.runs["seed"] == 0, "duplicate_conflict"].iloc[0]
    assert "found 2 times with different results" in conflict
    # a planned copy without records gives way to the run with records, silently
    e = tmp_path / "planned"
    factory.write_plan(e, [(factory.CONTROL, 0)], sweep="stage_a")
    c = collect([d, e])
    assert len(c.runs) == 2 and (c.runs["status"] != "missing").all()


def test_outside_study_is_read_from_the_manifest(tmp_path, factory):
    d = tmp_path / "rerun"
    factory.write_run(d, factory.CONTROL, 0, config={"outside_study": True})
    factory.write_run(d, factory.CONTROL, 1)
    assert collect([d]).runs["outside_study"].tolist() == [True, False]
