"""The dry run: grid expansion, status detection, refusals, estimates, plan.csv, CLI."""

from __future__ import annotations

import csv

import pytest
from _fixtures import write_run

from ptychostab.cli import plan as cli
from ptychostab.cli.plan import build_plan
from ptychostab.launch import grid
from ptychostab.launch import plan as planmod

GRID = ["arch=hybrid,stable_hybrid", "clip=none,agc", "seed=range(3)", "data=tiny"]


def test_expand_matches_the_basic_sweeper():
    jobs = grid.expand({"arm": "control,opt_fix", "seed": "range(3)"}, ["data=tiny"])
    assert len(jobs) == 6
    assert jobs[0] == ["arm=control", "seed=0", "data=tiny"]
    # a command-line value replaces the experiment's grid for that key
    assert grid.expand({"arm": "control,opt_fix", "seed": "range(3)"}, ["seed=5"]) == [
        ["arm=control", "seed=5"], ["arm=opt_fix", "seed=5"]]
    verbatim = ["arch=hybrid,stable_hybrid", "clip=none,agc", "seed=range(10)"]
    assert len(grid.expand({}, verbatim)) == 40


def test_plan_lists_every_job_with_its_arm_and_folder(tmp_path):
    plan = build_plan([*GRID, f"paths.output_root={tmp_path}"], describe=False)
    assert len(plan.jobs) == 12 and len(plan.arms) == 4
    assert plan.sweep_dir == tmp_path / "default"
    for job in plan.jobs:
        assert job.run_dir == tmp_path / "default" / job.arm_id / f"seed={job.seed}"
        assert job.status == planmod.TODO
    assert [a.seeds for a in plan.arms.values()] == [[0, 1, 2]] * 4


def test_status_from_result_records(tmp_path):
    plan = build_plan([*GRID, f"paths.output_root={tmp_path}"], describe=False)
    a, b = list(plan.arms)[:2]
    root = tmp_path / "default"
    write_run(root / a / "seed=0", status="ok", epochs=3)
    write_run(root / a / "seed=1", status="nonfinite", epochs=2)
    write_run(root / a / "seed=2", status="preempted", epochs=1)  # resumable: to do
    write_run(root / b / "seed=0", status=None, epochs=1)  # started, no result
    (root / b / "seed=1").mkdir(parents=True)
    (root / b / "seed=1" / "result.json").write_text("{ damaged")
    plan = build_plan([*GRID, f"paths.output_root={tmp_path}"], describe=False)
    status = {(j.arm_id, j.seed): j.status for j in plan.jobs}
    assert status[(a, 0)] == planmod.DONE and status[(a, 1)] == planmod.FAILED
    assert status[(a, 2)] == status[(b, 0)] == status[(b, 1)] == planmod.TODO
    assert plan.counts() == {planmod.DONE: 1, planmod.FAILED: 1, planmod.TODO: 10}
    final = plan.final_jobs()
    assert sorted(final.values()) == ["nonfinite", "ok"]


def test_plan_csv_columns_and_rows(tmp_path):
    plan = build_plan([*GRID, f"paths.output_root={tmp_path}"])
    path = planmod.write_csv(plan)
    assert path == tmp_path / "default" / "plan.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0])
    assert header[:9] == list(planmod.BASE_COLUMNS)
    assert header[-len(planmod.TAIL_COLUMNS):] == list(planmod.TAIL_COLUMNS)
    assert "data" in header  # a fixed arm-defining override becomes a column
    assert len(rows) == 12
    row = next(r for r in rows if r["clip"] == "agc")
    assert row["clip_value"] == "0.01" and row["arch"] in ("hybrid", "stable_hybrid")
    assert int(row["params_real"]) > 0 and float(row["memory_gb_estimate"]) > 0
    assert row["status"] == "todo" and row["overrides"].startswith("arch=")


def test_refuses_arms_over_the_memory_budget(tmp_path):
    plan = build_plan([*GRID, f"paths.output_root={tmp_path}", "plan.max_memory_gb=1e-6"])
    refused = plan.refusals()
    assert len(refused) == 4 and "plan.max_memory_gb" in refused[0]


def test_refuses_arms_that_cannot_be_built(tmp_path):
    plan = build_plan(["arch.levels=8", "data=grid_lines_n64", f"paths.output_root={tmp_path}"])
    (refusal,) = plan.refusals()
    assert "cannot be built" in refusal and "levels=8" in refusal


def test_invalid_jobs_are_reported_together(tmp_path):
    with pytest.raises(planmod.PlanError) as info:
        build_plan(["clip=norm", "clip.value=-1,1", "seed=range(3)", "data=tiny",
                    f"paths.output_root={tmp_path}"], describe=False)
    text = str(info.value)
    assert "3 of 6 job(s)" in text and "clip.value=-1.0" in text and "2 more like it" in text


def test_two_grid_points_with_one_config_are_refused(tmp_path):
    with pytest.raises(planmod.PlanError, match="same folder"):
        build_plan(["clip=norm", "clip.value=5,5.0", f"paths.output_root={tmp_path}"],
                   describe=False)


def test_runtime_estimates(tmp_path):
    plan = build_plan([*GRID, f"paths.output_root={tmp_path}"])
    assert all(a.epoch_s_source == "model" and a.epoch_s > 0 for a in plan.arms.values())
    a = list(plan.arms)[0]
    write_run(tmp_path / "default" / a / "seed=0", status=None, epochs=2, epoch_s=30.0)
    plan = build_plan([*GRID, f"paths.output_root={tmp_path}"])
    arm = plan.arms[a]
    assert (arm.epoch_s, arm.epoch_s_source) == (30.0, "measured")
    assert {x.epoch_s_source for x in plan.arms.values() if x.arm_id != a} == {"scaled"}
    job = next(j for j in plan.jobs if j.arm_id == a and j.seed == 0)
    assert job.est_minutes == pytest.approx((50 - 2) * 30.0 / 60)  # 50 epochs, 2 done
    text = planmod.format_plan(plan)
    assert a in text and "measured" in text and "to do" in text


def test_cli_exit_codes_and_outputs(tmp_path, capsys):
    # --no-calibrate: timing is tests/launch/test_calibrate.py's (these arms take seconds a step)
    assert cli.main(["--no-calibrate", *GRID, f"paths.output_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "4 arm(s) x seeds = 12 run(s)" in out and (tmp_path / "default/plan.csv").exists()
    assert cli.main([*GRID, f"paths.output_root={tmp_path}", "plan.max_memory_gb=1e-6"]) == 1
    assert "REFUSED" in capsys.readouterr().err
    assert cli.main(["arch.hiden_channels=3", f"paths.output_root={tmp_path}/x"]) == 2
    assert "hiden_channels" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli.main(["--help"]) == 0


def test_retry_trains_chosen_final_endings_again(tmp_path):
    grid = ["seed=range(3)", "data=tiny", f"paths.output_root={tmp_path}"]
    plan = build_plan(grid, describe=False)
    a, b, c = plan.jobs
    write_run(a.run_dir, status="oom", epochs=1)
    write_run(b.run_dir, status="nonfinite", epochs=1)
    write_run(c.run_dir, status="ok", epochs=1)
    plain = build_plan(grid, describe=False)
    assert [j.status for j in plain.jobs] == [planmod.FAILED, planmod.FAILED, planmod.DONE]
    retried = build_plan([*grid, "retry=[oom]"], describe=False)
    assert [j.status for j in retried.jobs] == [planmod.TODO, planmod.FAILED, planmod.DONE]
    assert retried.counts() == {planmod.DONE: 1, planmod.FAILED: 1, planmod.TODO: 1}
    assert tuple(a.overrides) not in retried.final_jobs()  # the launcher submits it
    assert "0:.(oom, retry)" in planmod.format_plan(retried)
    both = build_plan([*grid, "retry=[oom,nonfinite]"], describe=False)
    assert set(both.final_jobs().values()) == {"ok"}
    assert {j.arm_id for j in both.jobs} == {j.arm_id for j in plain.jobs}  # run-only


@pytest.mark.parametrize("grid", [["seed=range(0)"], ["arch=hybrid,fno", "seed=range(0)"]])
def test_an_empty_grid_is_refused(tmp_path, grid):
    with pytest.raises(planmod.PlanError, match="the grid is empty: seed=range"):
        build_plan([*grid, "data=tiny", f"paths.output_root={tmp_path}"], describe=False)
    assert not any(tmp_path.iterdir())
