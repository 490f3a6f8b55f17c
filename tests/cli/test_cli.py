"""train.py end to end on tiny data: records, seed 0, resume/skip, typos, the usage lines."""

from __future__ import annotations

import json

import pytest
from _fixtures import FAST, TINY, result_files, run_dirs, snapshot, status_of, train

from ptychostab import config as cfgmod
from ptychostab import identity
from ptychostab.runs import records

# The usage line of the issue, verbatim, plus tiny data, a small network and a tmp root.
SWEEP = ["-m", "arch=hybrid,stable_hybrid", "clip=none,agc", "seed=range(2)", *TINY]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The usage line's 8 jobs, shared by the tests below (they only read or restore it)."""
    out = tmp_path_factory.mktemp("sweep")
    res = train(SWEEP, out)
    assert res.returncode == 0, res.stdout[-4000:]
    return out / "default", res


def test_usage_line_writes_8_result_records(sweep):
    sweep_dir, res = sweep
    dirs = run_dirs(sweep_dir)
    assert len(dirs) == 8 and len({d.parent.name for d in dirs}) == 4
    assert sorted(d.name for d in dirs) == ["seed=0"] * 4 + ["seed=1"] * 4
    assert len(result_files(sweep_dir)) == 8 and (sweep_dir / "plan.csv").exists()
    for d in dirs:
        result = json.loads((d / records.RESULT).read_text())
        manifest = json.loads((d / records.MANIFEST).read_text())
        assert result["status"] in records.ALL_STATUSES
        assert result["arm_id"] == manifest["arm_id"] == d.parent.name
        assert d.name == f"seed={manifest['seed']}"
        assert manifest["arm"]["label"] == d.parent.name.rsplit("-", 1)[0]
        expected = identity.arm_id(cfgmod.compose(manifest["overrides"]))
        assert d.parent.name == expected  # the folder is the config's identity
    assert "plan (" in res.stdout  # the preflight ran
    arm = dirs[0].parent
    h0, h1 = (records.read_history(arm / f"seed={k}" / records.HISTORY).data for k in (0, 1))
    assert h0[0]["train_loss"] != h1[0]["train_loss"]  # the seeds differ


@pytest.mark.slow  # 12 s: a whole extra single run
def test_seed_zero_is_honoured(sweep, tmp_path):
    """seed=0 seeds the run (no `if cfg.seed:` bug): a second seed=0 run repeats it exactly."""
    sweep_dir, _ = sweep
    again = train(["arch=hybrid", "clip=none", "seed=0", *TINY], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    (run,) = run_dirs(tmp_path / "default")
    first = sweep_dir / run.parent.name / "seed=0"
    assert first.exists()  # same arm_id from a single run and from the sweep
    a = records.read_history(first / records.HISTORY).data
    b = records.read_history(run / records.HISTORY).data
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert json.loads((run / records.MANIFEST).read_text())["seed"] == 0


def test_rerun_of_a_finished_sweep_trains_nothing(sweep):
    sweep_dir, _ = sweep
    files = result_files(sweep_dir) + sorted(sweep_dir.glob("*/seed=*/" + records.HISTORY))
    before = snapshot(files)
    res = train(SWEEP, sweep_dir.parent)
    assert res.returncode == 0, res.stdout[-3000:]
    assert snapshot(files) == before
    assert res.stdout.count("SKIP") == 8


def test_after_deleting_one_result_exactly_one_job_runs(sweep):
    sweep_dir, _ = sweep
    victim, *others = result_files(sweep_dir)
    kept = snapshot(others)
    status = status_of(victim.parent)
    victim.unlink()
    res = train(SWEEP, sweep_dir.parent)
    assert res.returncode == 0, res.stdout[-3000:]
    assert res.stdout.count("SKIP") == 7  # the other seven
    assert victim.exists() and status_of(victim.parent) == status
    assert snapshot(others) == kept


def test_typo_fails_before_any_job_starts(tmp_path):
    bad_key = train(["-m", "arch=hybrid", "clip=none,agc", "seed=0", "arch.hiden_channels=4",
                     *FAST], tmp_path / "a")
    assert bad_key.returncode != 0 and "hiden_channels" in bad_key.stdout
    assert not (tmp_path / "a").exists()
    bad_value = train(["-m", "clip=norm", "clip.value=-1,1", "seed=0", *FAST], tmp_path / "b")
    assert bad_value.returncode != 0 and "clip.value=-1.0" in bad_value.stdout
    assert "Nothing was launched" in bad_value.stdout
    assert not (tmp_path / "b").exists()
    single = train(["depth=0", *FAST], tmp_path / "c")
    assert single.returncode != 0 and "depth=0" in single.stdout
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_experiment_usage_line_composes_and_plans(tmp_path):
    """`python train.py -m +experiment=stage_a` up to the launch (the dry run of the same)."""
    from ptychostab.cli.plan import main

    assert main(["--no-calibrate", "+experiment=stage_a", f"paths.output_root={tmp_path}"]) == 0
    assert (tmp_path / "stage_a" / "plan.csv").exists()


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    res = train(["-m", "launcher=submitit_local", "arch=hybrid", "clip=none,agc", "seed=0",
                 "cluster.gpus_per_node=null", "cluster.cpus_per_task=1", "cluster.mem_gb=null",
                 *FAST], tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    assert len(result_files(tmp_path / "default")) == 2
    rerun = train(["-m", "launcher=submitit_local", "arch=hybrid", "clip=none,agc", "seed=0",
                   "cluster.gpus_per_node=null", "cluster.cpus_per_task=1",
                   "cluster.mem_gb=null", *FAST], tmp_path)
    assert rerun.returncode == 0 and "Skipping 2 run(s)" in rerun.stdout
