"""train.py end to end on tiny data: records, seed 0, resume/skip, typos, the usage lines."""

from __future__ import annotations

import json

import pytest
from _fixtures import FAST, TINY, result_files, run_dirs, snapshot, status_of, train

from ptychostab import config as C
from ptychostab.runs import records
from ptychostab.sweep import identity

SWEEP = ["-m", "arch=hybrid", "clip=none,agc", "seed=0", *FAST]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One 2-job sweep shared by the tests below (they only read it or restore it)."""
    out = tmp_path_factory.mktemp("sweep")
    res = train(SWEEP, out)
    assert res.returncode == 0, res.stdout[-4000:]
    return out / "default", res


def test_sweep_writes_one_record_per_job(sweep):
    sweep_dir, res = sweep
    dirs = run_dirs(sweep_dir)
    assert [d.name for d in dirs] == ["seed=0", "seed=0"]
    assert len(result_files(sweep_dir)) == 2 and (sweep_dir / "plan.csv").exists()
    for d in dirs:
        result = json.loads((d / records.RESULT).read_text())
        manifest = json.loads((d / records.MANIFEST).read_text())
        assert result["status"] in records.ALL_STATUSES
        assert result["arm_id"] == manifest["arm_id"] == d.parent.name
        assert manifest["seed"] == 0
        assert manifest["arm"]["label"] == d.parent.name.rsplit("-", 1)[0]
        expected = identity.arm_id(C.compose(manifest["overrides"]))
        assert d.parent.name == expected  # the folder is the config's identity
    assert "preflight" in res.stdout or "plan (" in res.stdout


def test_seed_zero_is_honoured(sweep, tmp_path):
    """seed=0 seeds the run (no `if cfg.seed:` bug): a second seed=0 run repeats it exactly."""
    sweep_dir, _ = sweep
    again = train(["arch=hybrid", "clip=none", "seed=0", *FAST], tmp_path)
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
    assert res.stdout.count("SKIP") == 2


def test_after_deleting_one_result_exactly_one_job_runs(sweep):
    sweep_dir, _ = sweep
    victim, other = result_files(sweep_dir)
    kept = snapshot([other])
    status = status_of(victim.parent)
    victim.unlink()
    res = train(SWEEP, sweep_dir.parent)
    assert res.returncode == 0, res.stdout[-3000:]
    assert res.stdout.count("SKIP") == 1
    assert victim.exists() and status_of(victim.parent) == status
    assert snapshot([other]) == kept


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
def test_usage_line_runs_its_8_jobs(tmp_path):
    """README/issue usage line, verbatim plus tiny data and a small network."""
    res = train(["-m", "arch=hybrid,stable_hybrid", "clip=none,agc", "seed=range(2)", *TINY],
                tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    sweep_dir = tmp_path / "default"
    assert len(result_files(sweep_dir)) == 8
    assert len({d.parent.name for d in run_dirs(sweep_dir)}) == 4
    assert {d.name for d in run_dirs(sweep_dir)} == {"seed=0", "seed=1"}
    a0, a1 = (records.read_history(sweep_dir / run_dirs(sweep_dir)[0].parent.name / f"seed={s}"
                                   / records.HISTORY).data for s in (0, 1))
    assert a0[0]["train_loss"] != a1[0]["train_loss"]  # seeds differ


@pytest.mark.slow
def test_experiment_usage_line_composes_and_plans(tmp_path):
    """`python train.py -m +experiment=stage_a` up to the launch (the dry run of the same)."""
    from ptychostab.cli.plan import main

    assert main(["+experiment=stage_a", f"paths.output_root={tmp_path}"]) == 0
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
