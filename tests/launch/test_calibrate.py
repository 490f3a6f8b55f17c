"""The calibrated estimate (issue 21): precedence and labels, cache keying, the preflight that
never times, the remote-device message, the cost bound, and (slow) the estimator against a
measured epoch.

The fast tests never time a real arm except :func:`test_measure_arm_times_a_tiny_arm` (about
two seconds); elsewhere the measurement is a double and the cache a file of this test
(``tests/conftest.py`` points ``PTYCHOSTAB_CALIBRATION`` at the test's folder).
"""

from __future__ import annotations

import json
import os
import statistics

import pytest
import torch
from _fixtures import preflight, train, write_run
from omegaconf import OmegaConf

from ptychostab import config as cfgmod
from ptychostab.cli import plan as cli
from ptychostab.cli.plan import build_plan
from ptychostab.launch import calibrate, estimate
from ptychostab.launch import plan as planmod
from ptychostab.training.testing import tiny_config

# four small arms (describe is quick; nothing is trained)
GRID = ["arch=hybrid,stable_hybrid", "clip=none,agc", "seed=range(2)", "data=tiny",
        "arch.hidden_channels=4", "arch.n_modes=4"]
DATE = "2026-12-01T00:00:00+00:00"
H200 = "cuda: NVIDIA H200"


def grid(tmp_path, *extra: str) -> list[str]:
    return [*GRID, *extra, f"paths.output_root={tmp_path}"]


def grid2(tmp_path, *extra: str) -> list[str]:
    """Two arms (hybrid and stable_hybrid, no clipping), one seed: the quicker plan."""
    return [*GRID[3:], "arch=hybrid,stable_hybrid", "seed=0", *extra,
            f"paths.output_root={tmp_path}"]


def cache_file():
    return calibrate.cache_path({})  # PTYCHOSTAB_CALIBRATION (tests/conftest.py)


def entry(arm, epoch_s: float, *, device: str | None = None, steps: int = 7,
          partition: str | None = None) -> dict:
    """A cache entry as measure_arm writes it (the fields the estimate reads)."""
    return {"device": device or calibrate.local_device_name(arm.cfg),
            "shape": calibrate.shape_key(arm.cfg), "epoch_s": epoch_s, "steps": steps,
            "partition": partition, "date": DATE}


class Timed(BaseException):
    """Raised by a timing double where nothing may be timed (not an Exception: no handler
    of the code under test may swallow it)."""


@pytest.fixture
def no_timing(monkeypatch):
    """Every way of timing an arm raises; the calls are listed."""
    calls: list[str] = []

    def refuse(name):
        def fn(*args, **kwargs):
            calls.append(name)
            raise Timed(name)
        return fn

    monkeypatch.setattr(calibrate, "measure_arm", refuse("measure_arm"))
    monkeypatch.setattr(calibrate, "time_steps", refuse("time_steps"))
    return calls


@pytest.fixture
def fake_measure(monkeypatch):
    """``measure_arm`` replaced by a double: 12.5 s/epoch, 9 steps, this machine's device, the
    partition of the SLURM job it runs in (as the real one records it)."""
    calls: list[dict] = []

    def measure(cfg, *, budget_s, clock=None):
        calls.append({"cfg": cfg, "budget_s": budget_s})
        return {"device": calibrate.local_device_name(cfg), "shape": calibrate.shape_key(cfg),
                "epoch_s": 12.5, "steps": 9, "date": DATE,
                "partition": os.environ.get("SLURM_JOB_PARTITION") or None}

    monkeypatch.setattr(calibrate, "measure_arm", measure)
    return calls


# --- precedence and labels -----------------------------------------------------------------------
def test_precedence_measured_over_calibrated_over_scaled_over_model(tmp_path):
    plan = build_plan(grid(tmp_path))
    a, b, c, d = plan.arms.values()
    assert {x.epoch_s_source for x in plan.arms.values()} == {"model"}
    assert a.epoch_s_detail.startswith("model") and "(model" in planmod.format_plan(plan)

    calibrate.store(cache_file(), [entry(a, 111.0), entry(b, 222.0)])
    plan = build_plan(grid(tmp_path))
    a, b, c, d = plan.arms.values()
    assert [(x.epoch_s_source, x.epoch_s) for x in (a, b)] == [("calibrated", 111.0),
                                                               ("calibrated", 222.0)]
    assert b.epoch_s_detail == (f"calibrated on {calibrate.local_device_name(b.cfg)}, 7 steps, "
                                f"2026-12-01")
    assert (c.epoch_s_source, d.epoch_s_source) == ("scaled", "scaled")
    assert c.epoch_s_detail == "scaled from calibrated arms by training memory"
    job = next(j for j in plan.jobs if j.arm_id == b.arm_id)
    assert job.est_minutes == pytest.approx(50 * 222.0 / 60)  # 50 epochs (trainer default)
    text = planmod.format_plan(plan)
    assert f"222.0 s/epoch (calibrated on {calibrate.local_device_name(b.cfg)}, 7 steps" in text

    # a's own runs measured 30 s epochs: they win over its calibration; c and d now scale
    # from the measured arm, b keeps its calibration
    write_run(plan.sweep_dir / a.arm_id / "seed=0", status=None, epochs=3, epoch_s=30.0)
    plan = build_plan(grid(tmp_path))
    a, b, c, d = plan.arms.values()
    assert (a.epoch_s_source, a.epoch_s) == ("measured", 30.0)
    assert a.epoch_s_detail == "measured, 2 epoch(s) of this sweep's runs"
    assert (b.epoch_s_source, b.epoch_s) == ("calibrated", 222.0)
    assert c.epoch_s_source == "scaled" and c.epoch_s_detail.startswith("scaled from measured")
    assert c.epoch_s == pytest.approx(30.0 * c.memory_gb / a.memory_gb)
    assert estimate.SOURCES == ("measured", "calibrated", "scaled", "model")


# --- keying --------------------------------------------------------------------------------------
def test_the_cache_is_keyed_by_device_and_arm_shape(tmp_path):
    plan = build_plan(grid2(tmp_path))
    a, b, *_ = plan.arms.values()
    # another device's figure for the very same shape is not this machine's
    calibrate.store(cache_file(), [entry(a, 5.0, device=H200), entry(b, 5.0, device=H200)])
    plan = build_plan(grid2(tmp_path))
    assert {x.epoch_s_source for x in plan.arms.values()} == {"model"}
    # nor is this device's figure for another shape (batch 8 instead of 16)
    other = build_plan(grid2(tmp_path, "trainer.batch_size=8"))
    calibrate.store(cache_file(), [entry(x, 6.0) for x in other.arms.values()])
    plan = build_plan(grid2(tmp_path))
    assert {x.epoch_s_source for x in plan.arms.values()} == {"model"}
    calibrate.store(cache_file(), [entry(a, 7.0)])
    plan = build_plan(grid2(tmp_path))
    assert plan.arms[a.arm_id].epoch_s_source == "calibrated"

    def key(*overrides):
        return calibrate.shape_key(cfgmod.to_plain(cfgmod.compose(["data=tiny", *overrides])))

    # the clip threshold costs nothing: the clip sweep's arms share one calibration
    assert key("clip=norm", "clip.value=1") == key("clip=norm", "clip.value=100")
    assert key("clip=norm") != key("clip=agc")
    assert len({key(), key("depth=8"), key("trainer.batch_size=8"), key("arch=stable_hybrid"),
                key("data=grid_lines_n64"), key("trainer.cuda_graphs=true")}) == 6
    assert key("seed=3", "trainer.max_epochs=7", "sweep=x") == key()  # not the epoch's cost
    # the CPU's threads are part of its name
    threads = torch.get_num_threads()
    try:
        one = calibrate.device_name("cpu")
        torch.set_num_threads(threads + 1)
        assert calibrate.device_name("cpu") != one and one.startswith("cpu: ")
    finally:
        torch.set_num_threads(threads)


# --- the preflight reads, never times ------------------------------------------------------------


def test_the_sweep_preflight_never_calibrates(tmp_path, no_timing):
    plan = preflight(grid2(tmp_path))
    assert no_timing == [] and {a.epoch_s_source for a in plan.arms.values()} == {"model"}
    assert "with no calibration on this machine's device" in planmod.format_plan(plan)
    a = next(iter(plan.arms.values()))
    calibrate.store(cache_file(), [entry(a, 42.0)])
    plan = preflight(grid2(tmp_path))
    assert no_timing == [] and plan.arms[a.arm_id].epoch_s == 42.0
    assert plan.arms[a.arm_id].epoch_s_source == "calibrated"
    # the same for a plan built as the preflight builds it, and a dry run that is told not to
    assert cli.main(["--no-calibrate", *grid2(tmp_path)]) == 0
    assert no_timing == []


def test_the_dry_run_calibrates_then_reads_the_cache(tmp_path, fake_measure, capsys):
    assert cli.main(grid2(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert err.count("calibrating ") == 2 and "(1/2, 30 s of the budget left" in err
    assert len(fake_measure) == 2  # one per arm shape, each with its share of the budget
    assert fake_measure[0]["budget_s"] == pytest.approx(calibrate.DEFAULT_BUDGET_S / 2, rel=0.1)
    device = calibrate.local_device_name(fake_measure[0]["cfg"])
    assert out.count(f"12.5 s/epoch (calibrated on {device}, 9 steps, 2026-12-01)") == 2
    assert "calibration on " in out and "2 arm shape(s) timed" in out
    assert f"cache {cache_file()}" in out
    stored = json.loads(cache_file().read_text())
    assert stored["schema_version"] == 1 and len(stored["entries"]) == 2
    # again: the cache answers, nothing is timed; --calibrate times every arm again
    assert cli.main(grid2(tmp_path)) == 0 and len(fake_measure) == 2
    assert "2 from the cache" in capsys.readouterr().out
    assert cli.main(["--calibrate", *grid2(tmp_path)]) == 0 and len(fake_measure) == 4
    assert cli.main(["--calibrate-budget=x", *grid2(tmp_path)]) == 2
    assert "--calibrate-budget takes seconds" in capsys.readouterr().err
    # arms with measured epochs of their own are not timed
    cache_file().unlink()
    plan = build_plan(grid2(tmp_path))
    for arm in plan.arms.values():
        write_run(plan.sweep_dir / arm.arm_id / "seed=0", status=None, epochs=2)
    assert cli.main(grid2(tmp_path)) == 0 and len(fake_measure) == 4


# --- a remote device -----------------------------------------------------------------------------
SLURM = ("launcher=slurm", "cluster.partition=gpu")


def test_a_slurm_sweep_is_never_given_this_machines_figure(tmp_path, fake_measure, capsys,
                                                           monkeypatch):
    monkeypatch.delenv("SLURM_JOB_PARTITION", raising=False)
    plan = build_plan(grid2(tmp_path))
    arms = list(plan.arms.values())
    calibrate.store(cache_file(), [entry(a, 3.0) for a in arms])  # this machine's figures
    remote = build_plan(grid2(tmp_path, *SLURM))
    assert remote.remote and {a.epoch_s_source for a in remote.arms.values()} == {"model"}
    text = planmod.format_plan(remote)
    assert "not calibrated for SLURM partition 'gpu'" in text
    assert "--calibrate" in text and "srun -p gpu" in text and str(cache_file()) in text
    # the dry run of a SLURM sweep times nothing; --calibrate outside a SLURM job neither
    assert cli.main(grid2(tmp_path, *SLURM)) == 0 and fake_measure == []
    assert "not calibrated for SLURM partition 'gpu'" in capsys.readouterr().out
    assert cli.main(["--calibrate", *grid2(tmp_path, *SLURM)]) == 0 and fake_measure == []
    assert "this is not a SLURM job" in capsys.readouterr().out

    # entries written in SLURM jobs: another partition's, and two devices on 'gpu' (the
    # slowest is used)
    calibrate.store(cache_file(), [entry(arms[0], 1.0, device="cuda: A", partition="debug"),
                                   entry(arms[0], 4.0, device=H200, partition="gpu"),
                                   entry(arms[0], 9.0, device="cuda: NVIDIA A100",
                                         partition="gpu")])
    remote = build_plan(grid2(tmp_path, *SLURM))
    first = remote.arms[arms[0].arm_id]
    assert (first.epoch_s_source, first.epoch_s) == ("calibrated", 9.0)
    assert first.epoch_s_detail.startswith("calibrated on cuda: NVIDIA A100 (partition gpu)")
    assert build_plan(grid2(tmp_path, "launcher=slurm")).arms[arms[0].arm_id].epoch_s_source \
        == "model"  # no cluster.partition: nothing can be matched

    # --calibrate as a job on the partition records it for the partition
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu")
    assert cli.main(["--calibrate", *grid2(tmp_path, *SLURM)]) == 0 and len(fake_measure) == 2
    out = capsys.readouterr().out
    device = calibrate.local_device_name(arms[0].cfg)
    # the first arm: this node's 12.5 s is now the slowest of the partition's three devices
    assert out.count(f"12.5 s/epoch (calibrated on {device} (partition gpu), 9 steps") == 2


# --- the cost bound ------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_calibration_of_a_study_keeps_to_its_budget(tmp_path):
    plan = build_plan(grid(tmp_path))
    clock = FakeClock()
    seen = []

    def measure(cfg, *, budget_s):
        seen.append(budget_s)
        clock.now += 12.0  # every arm costs 12 s
        return {"device": calibrate.local_device_name(cfg),
                "shape": calibrate.shape_key(cfg), "epoch_s": 1.0, "steps": 3, "date": DATE}

    report = calibrate.calibrate_plan(plan, budget_s=30, measure=measure, clock=clock)
    # 12 + 12 = 24 s; a third arm (predicted 12 s) would not fit in the 6 s left
    assert report.shapes == 2 and len(report.skipped) == 2 and report.cost_s == 24.0
    assert seen == [30 / 4, 18 / 3]
    lines = "\n".join(report.lines())
    assert "2 arm shape(s) timed in 24.0 s (bound: --calibrate-budget 30 s" in lines
    assert "2 arm(s) not timed within the budget" in lines
    assert "--calibrate-budget 50 times them" in lines  # 12 s x 4 arms, rounded up
    estimate.estimate_times(plan)  # the two left out: scaled from the calibrated ones
    assert sorted(a.epoch_s_source for a in plan.arms.values()) == ["calibrated",
                                                                   "calibrated", "scaled",
                                                                   "scaled"]
    clock.now = 0.0
    again = calibrate.calibrate_plan(plan, budget_s=100, measure=measure, clock=clock,
                                     force=True)
    assert again.shapes == 4 and again.skipped == []


def test_step_timing_excludes_the_warm_up_and_keeps_to_its_budget():
    clock = FakeClock()
    costs = iter([50.0] + [1.0] * 1000)  # a slow first step (lazy init), then 1 s steps

    def step():
        clock.now += next(costs)

    t = calibrate.time_steps(step, warmup=1, budget_s=60, enough_s=100, clock=clock)
    assert t.step_s == 1.0 and t.warmup == 1 and t.warmup_s == 50.0
    assert t.steps == 10 and clock.now == 60  # the budget counts the warm-up
    assert [n for n, _ in t.blocks] == [1, 1, 2, 4, 2]  # blocks double, then fill the budget

    clock.now = 0.0
    slow = calibrate.time_steps(lambda: setattr(clock, "now", clock.now + 100.0), warmup=1,
                                budget_s=10, clock=clock)
    assert slow.steps == calibrate.MIN_STEPS  # at least two timed steps, whatever the budget

    clock.now = 0.0
    fast = calibrate.time_steps(lambda: setattr(clock, "now", clock.now + 1e-3), warmup=3,
                                budget_s=1000, clock=clock)
    assert fast.steps == calibrate.MAX_STEPS and fast.step_s == pytest.approx(1e-3)
    clock.now = 0.0
    enough = calibrate.time_steps(lambda: setattr(clock, "now", clock.now + 0.1), warmup=1,
                                  budget_s=1000, enough_s=2.0, clock=clock)
    assert 1.5 <= sum(s for _, s in enough.blocks) <= 2.0 + 1e-9 and enough.steps < 25


# --- the real measurement and the cache file -----------------------------------------------------
def test_measure_arm_times_a_tiny_arm(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_PARTITION", "debug")
    cfg = OmegaConf.to_container(tiny_config(), resolve=True)
    e = calibrate.measure_arm(cfg, budget_s=1.0)
    assert e["device"] == calibrate.device_name("cpu") and e["partition"] == "debug"
    assert e["shape"] == calibrate.shape_key(cfg) and e["warmup_steps"] == 1
    assert e["steps"] >= calibrate.MIN_STEPS and e["step_s"] > 0
    assert e["steps_per_epoch"] == 4 and e["val_patterns"] == 9  # 49 train / 9 test patterns
    assert e["epoch_s"] == pytest.approx(4 * e["step_s"] + 9 * e["val_s_per_pattern"]
                                         + e["epoch_end_s"])
    assert e["epoch_end_s"] >= e["checkpoint_s"] > 0 and e["probe_s"] > 0
    assert e["cost_s"] < 30 and e["torch"] == torch.__version__ and e["date"][:2] == "20"


def test_the_cache_file_merges_and_survives_damage():
    path = cache_file()
    a = {"device": "cpu: X", "shape": "s1", "epoch_s": 1.0, "steps": 2}
    b = {"device": H200, "shape": "s1", "epoch_s": 0.1, "steps": 50}
    calibrate.store(path, [a])
    calibrate.store(path, [b])
    assert set(calibrate.read_cache(path)) == {"cpu: X | s1", f"{H200} | s1"}
    calibrate.store(path, [{**a, "epoch_s": 2.0}])  # the same key: replaced
    assert calibrate.read_cache(path)["cpu: X | s1"]["epoch_s"] == 2.0
    assert not list(path.parent.glob(".calibration.json.*.tmp"))  # atomic: no leftovers
    path.write_text("{ damaged")
    assert calibrate.read_cache(path) == {}
    calibrate.store(path, [a])
    assert list(calibrate.read_cache(path)) == ["cpu: X | s1"]
    path.write_text(json.dumps({"schema_version": 99, "entries": {"k": a}}))
    assert calibrate.read_cache(path) == {}
    # a committed file's note on its machine survives a merge
    path.write_text(json.dumps({"schema_version": 1, "about": {"machine": "m"}, "entries": {}}))
    calibrate.store(path, [a])
    assert json.loads(path.read_text())["about"] == {"machine": "m"}


# --- the estimator against a measured epoch (slow) -----------------------------------------------
@pytest.mark.slow
def test_the_calibrated_epoch_is_within_2x_of_the_measured_one(tmp_path, capsys):
    """A check of the estimator, not of speed: calibrate a small arm in this process (one
    thread, as the job below), then train it for 3 epochs and compare with its epochs."""
    overrides = ["data=tiny", "data.size=64", "trainer=smoke", "trainer.max_epochs=3",
                 "arch.hidden_channels=8", "arch.n_modes=6", f"paths.output_root={tmp_path}"]
    plan = build_plan(overrides)
    report = calibrate.calibrate_plan(plan, budget_s=20)
    estimate.estimate_times(plan)
    (arm,) = plan.arms.values()
    assert report.shapes == 1 and arm.epoch_s_source == "calibrated", report.lines()
    calibrated = arm.epoch_s
    res = train(overrides, None)  # OMP_NUM_THREADS=1, as torch here (tests/conftest.py)
    assert res.returncode == 0, res.stdout[-3000:]
    (job,) = plan.jobs
    epochs = estimate.history_epochs(job.run_dir)
    assert len(epochs) == 2  # 3 epochs: 2 differences, setup excluded
    measured = statistics.median(epochs)
    with capsys.disabled():
        print(f"\ncalibrated {calibrated:.3f} s/epoch ({arm.epoch_s_detail}) vs measured "
              f"{measured:.3f} s/epoch (epochs {epochs}): ratio {calibrated / measured:.2f}")
    assert 0.5 <= calibrated / measured <= 2.0
    after = build_plan(overrides).arms[arm.arm_id]
    assert after.epoch_s_source == "measured"  # the run's own epochs now win
