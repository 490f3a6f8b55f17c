"""SLURM launcher: sbatch settings and the launcher's bookkeeping without a cluster (default
suite), and real sweeps on a running cluster (marker ``slurm``; ``make slurm-up`` first)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _fixtures import (
    FAST,
    TINY,
    FakeExecutor,
    result_files,
    run_dirs,
    status_of,
    train,
    wait_for,
    write_run,
)
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.ptychostab_launcher.launcher import PtychoSlurmLauncher
from ptychostab import config as cfgmod
from ptychostab.cli.plan import build_plan
from ptychostab.launch import killed_jobs
from ptychostab.launch import preflight as callbacks
from ptychostab.runs import records

# What the local test cluster offers: no GPU, 2 CPUs, little memory.
CLUSTER = ["launcher=slurm", "cluster.gpus_per_node=null", "cluster.cpus_per_task=1",
           "cluster.mem_gb=null", "cluster.timeout_min=20", "cluster.signal_delay_s=30",
           "cluster.poll_interval_s=2"]


def _launcher_params(overrides: list[str]) -> dict:
    cfg = cfgmod.compose(overrides, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    return params


def test_sbatch_script_carries_the_cluster_settings(tmp_path, monkeypatch):
    import submitit
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    params = _launcher_params(["launcher=slurm", "cluster.partition=gpu", "cluster.account=lab",
                               "cluster.qos=high", "cluster.timeout_min=90",
                               "cluster.comment=study", "cluster.exclude=node7"])
    params["submitit_folder"] = str(tmp_path / "%j")
    launcher = PtychoSlurmLauncher(**params)
    executor = launcher._executor(submitit)
    text = slurm._make_sbatch_string(command="python -m x", folder=tmp_path, map_count=30,
                                     **executor._executor.parameters)
    for flag in ("--partition=gpu", "--account=lab", "--qos=high", "--time=90",
                 "--gpus-per-node=1", "--cpus-per-task=4", "--mem=32GB",
                 "--array=0-29%30", "--signal=USR2@120", "--ntasks-per-node=1",
                 "--comment=study", "--exclude=node7"):
        assert f"#SBATCH {flag}" in text, flag
    assert "export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK > 0" in text
    assert executor._executor.max_num_timeout == 3


def test_sbatch_script_omits_what_is_null(tmp_path, monkeypatch):
    import submitit
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    params = _launcher_params(CLUSTER)
    params["submitit_folder"] = str(tmp_path / "%j")
    executor = PtychoSlurmLauncher(**params)._executor(submitit)
    text = slurm._make_sbatch_string(command="x", folder=tmp_path, **executor._executor.parameters)
    assert "--gpus-per-node" not in text and "--partition" not in text and "--mem" not in text


def test_launcher_skips_final_runs_waits_for_all_and_records_killed_ones(tmp_path, monkeypatch):
    from submitit.core.utils import FailedJobError, UncompletedJobError

    grid = ["-m", "seed=range(4)", "data=tiny", f"paths.output_root={tmp_path}"]
    plan = build_plan(grid[1:], describe=False)
    done, killed, never, broken = plan.jobs
    write_run(done.run_dir, status="ok", epochs=3)  # final: must not be submitted
    write_run(killed.run_dir, status=None, epochs=2)  # started, then killed by SLURM
    plan = build_plan(grid[1:], describe=False)
    monkeypatch.setitem(callbacks._STATE, "plan", plan)

    ok = JobReturn(overrides=[], status=JobStatus.COMPLETED)
    ok.return_value = "ok"
    outcomes = {tuple(killed.overrides): UncompletedJobError("no output (state: CANCELLED)"),
                tuple(never.overrides): UncompletedJobError("never started"),
                tuple(broken.overrides): FailedJobError("Traceback: boom")}
    fake = FakeExecutor(outcomes)
    params = _launcher_params(["launcher=slurm"])
    launcher = PtychoSlurmLauncher(**params)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(plan.sweep_dir)}}})
    monkeypatch.setattr(launcher, "_executor", lambda submitit: fake)

    returns = launcher.launch([j.overrides for j in plan.jobs], initial_job_idx=0)
    assert fake.submitted == [killed.overrides, never.overrides, broken.overrides]
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 3 + [JobStatus.FAILED]
    assert "skipped (ok)" in returns[0].return_value
    assert status_of(killed.run_dir) == "preempted"  # resumable, classifiable
    result = json.loads((killed.run_dir / records.RESULT).read_text())
    assert result["failure"]["kind"] == "preempted" and "CANCELLED" in result["failure"]["message"]
    assert result["epochs_completed"] == 2 and result["recorded_by"] == "launcher"
    assert not never.run_dir.exists()  # no manifest: stays "missing" for the aggregator
    assert killed_jobs.status_for_state("TIMEOUT") == "timeout"


@pytest.mark.parametrize("state,status,cause", [
    ("OUT_OF_MEMORY", "infra", "memory"), ("NODE_FAIL", "infra", "node"),
    ("TIMEOUT", "timeout", None), ("CANCELLED by 0", "preempted", None)])
def test_scheduler_kills_are_not_final(tmp_path, monkeypatch, state, status, cause):
    """A scheduler's OOM kill or a node failure is infra (with its cause): a rerun retries it."""
    plan = build_plan(["seed=0", "data=tiny", f"paths.output_root={tmp_path}"], describe=False)
    (job,) = plan.jobs
    write_run(job.run_dir, status=None, epochs=1)
    got = killed_jobs.record_killed(plan, job.overrides, state=state, job_id="9_0", message="x")
    result = json.loads((job.run_dir / records.RESULT).read_text())
    assert got == result["status"] == status and not records.is_final(status)
    assert result["failure"].get("cause") == cause and result["slurm_state"] == state
    again = build_plan(["seed=0", "data=tiny", f"paths.output_root={tmp_path}"], describe=False)
    assert again.jobs[0].status == "todo" and not again.final_jobs()  # the rerun retries it


def test_a_job_killed_without_a_plan_is_reported_killed(tmp_path, monkeypatch):
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.ptychostab_launcher.launcher import JobKilled

    monkeypatch.setitem(callbacks._STATE, "plan", None)  # e.g. another sweeper: no plan
    fake = FakeExecutor({("seed=0",): UncompletedJobError("killed (state: CANCELLED)")})
    launcher = PtychoSlurmLauncher(**_launcher_params(["launcher=slurm"]))
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    monkeypatch.setattr(launcher, "_executor", lambda submitit: fake)
    (ret,) = launcher.launch([["seed=0"]], initial_job_idx=0)
    assert ret.status == JobStatus.FAILED  # never COMPLETED
    with pytest.raises(JobKilled, match="killed by the scheduler"):
        _ = ret.return_value


# --- on a real cluster --------------------------------------------------------------------------
def _cluster_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "alloc"))


needs_cluster = pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (make slurm-up)")


def _slurm_job_id(run_dir: Path) -> str | None:
    manifest = records.read_json(run_dir / records.MANIFEST)
    if not manifest.ok:
        return None
    ids = manifest.data.get("slurm") or {}
    array, task = ids.get("SLURM_ARRAY_JOB_ID"), ids.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task is not None else ids.get("SLURM_JOB_ID")


def _raw_job_id(run_dir: Path) -> str:
    """SLURM_JOB_ID (what scontrol listpids takes; an array task has its own)."""
    return (records.read_json(run_dir / records.MANIFEST).data or {})["slurm"]["SLURM_JOB_ID"]


def _cancel_leftovers(sweep_dir: Path) -> None:
    """A failed test must not leave its jobs running on the shared cluster."""
    ids = {_raw_job_id(d) for d in run_dirs(sweep_dir)
           if records.read_json(d / records.MANIFEST).ok}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False)


def _eligible_now(job: str, wait_s: float = 60) -> None:
    """Once ``job`` is requeued (pending, reason BeginTime: SLURM's two-minute requeue delay),
    make it eligible at once, as an admin may: the test then takes seconds, not minutes."""
    def requeued() -> bool:
        res = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={job}",
                              "--format=%T|%r"], capture_output=True, text=True)
        return res.stdout.strip() == "PENDING|BeginTime"

    if wait_for(requeued, wait_s, every=0.2):
        subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=False)


def _history_rows(run_dir: Path) -> int:
    return len(records.read_history(run_dir / records.HISTORY).data or [])


@pytest.mark.slurm
@needs_cluster
def test_slurm_sweep_2_arms_x_2_seeds(tmp_path):
    res = train(["-m", *CLUSTER, "arch=hybrid,stable_hybrid", "seed=range(2)", *FAST], tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "Submitted 4 job(s)" in res.stdout
    files = result_files(tmp_path / "default")
    assert len(files) == 4
    for f in files:
        data = json.loads(f.read_text())
        assert records.is_final(data["status"])
        manifest = json.loads((f.parent / records.MANIFEST).read_text())
        assert manifest["slurm"]["SLURM_ARRAY_JOB_ID"]  # it ran as an array task
    rerun = train(["-m", *CLUSTER, "arch=hybrid,stable_hybrid", "seed=range(2)", *FAST], tmp_path)
    assert rerun.returncode == 0 and "Skipping 4 run(s)" in rerun.stdout
    assert "Submitted" not in rerun.stdout


def _job_pythons(job: str) -> list[int]:
    """Pids of the job's Python processes (proctrack/linuxproc tracks them)."""
    res = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True)
    pids = []
    for line in res.stdout.splitlines()[1:]:
        pid = int(line.split()[0])
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("python"):
                pids.append(pid)
        except OSError:
            pass
    return pids


@pytest.mark.slurm
@needs_cluster
def test_job_cancelled_by_slurm_leaves_a_classifiable_record(tmp_path):
    """Three jobs: one finishes; one is cancelled (scancel: SIGTERM, the job records itself);
    one is killed outright (SIGKILL, as the OOM killer or a node crash would) and never
    writes its result: the launcher records it. The sweep completes either way."""
    from ptychostab.analysis.collect import collect

    proc = train(["-m", *CLUSTER, "seed=0", *FAST, "trainer.max_epochs=2,400,401"], tmp_path,
                 wait=False)
    sweep_dir = tmp_path / "default"

    def run_of(epochs: int) -> Path | None:  # a run, once it has started
        for d in run_dirs(sweep_dir):
            arm = (records.read_json(d / records.MANIFEST).data or {}).get("arm") or {}
            if arm.get("trainer.max_epochs") == epochs:
                return d
        return None

    def training(epochs: int) -> bool:
        return run_of(epochs) is not None and _history_rows(run_of(epochs)) >= 1

    try:
        assert wait_for(lambda: training(400) and training(401), 300)
        cancelled, killed = run_of(400), run_of(401)
        subprocess.run(["scancel", _slurm_job_id(cancelled)], check=True)
        pids = _job_pythons(_raw_job_id(killed))
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            _cancel_leftovers(tmp_path / "default")
    assert proc.returncode == 0, out[-4000:]  # the launcher waited for all and exits cleanly
    assert "ended without a result" in out  # the SIGKILLed job, recorded by the launcher
    runs = collect([sweep_dir]).runs.set_index("arm_id")
    assert runs.loc[cancelled.parent.name, "status"] in ("timeout", "preempted", "missing")
    assert runs.loc[killed.parent.name, "status"] in ("timeout", "preempted", "missing")
    assert json.loads((killed / records.RESULT).read_text())["recorded_by"] == "launcher"
    assert records.is_final(runs.loc[run_of(2).parent.name, "status"])  # the other finished
    assert len(result_files(sweep_dir)) == 3


@pytest.mark.slurm
@needs_cluster
def test_requeued_job_resumes_from_its_checkpoint(tmp_path):
    """USR2 (what SLURM sends before a time limit / preemption): submitit requeues the same
    job, which resumes from last.ckpt in the same folder; the history continues."""
    epochs = 10
    proc = train(["-m", *CLUSTER, "seed=0", *TINY, f"trainer.max_epochs={epochs}"], tmp_path,
                 wait=False)
    try:
        sweep_dir = tmp_path / "default"
        assert wait_for(lambda: run_dirs(sweep_dir) and _history_rows(run_dirs(sweep_dir)[0]) >= 2,
                        300)
        (run,) = run_dirs(sweep_dir)
        assert _history_rows(run) < epochs, "the job finished before it could be interrupted"
        job = _slurm_job_id(run)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        _eligible_now(job)  # SLURM holds a requeued job back two minutes (BeginTime)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            _cancel_leftovers(tmp_path / "default")
    assert proc.returncode == 0, out[-4000:]
    result = json.loads((run / records.RESULT).read_text())
    assert records.is_final(result["status"]) and result["epochs_completed"] == epochs
    history = records.read_history(run / records.HISTORY).data
    assert [int(r["epoch"]) for r in history] == list(range(epochs))  # continued, no restart
    walls = [r["wall_s"] for r in history]
    assert walls == sorted(walls)
    manifest = json.loads((run / records.MANIFEST).read_text())
    segments = manifest["segments"]
    assert len(segments) >= 2 and segments[-1]["resumed_from"]["epoch"] >= 1
    assert int(segments[-1]["slurm"]["SLURM_RESTART_COUNT"] or 0) >= 1
    assert "RESUME" in (run / "train.log").read_text()


@pytest.mark.slurm
@needs_cluster
def test_a_rerun_while_the_jobs_are_queued_waits_for_them_and_submits_nothing_again(tmp_path):
    """The launcher is stopped (SIGTERM) while its jobs run one at a time (one GPU each on the
    one-GPU node): it exits at once, says what still runs and frees the sweep lock. The same
    command run again recognises every unfinished run's job (submitted.json, squeue), submits
    none of them again, waits for them as its own and exits 0 when all are ok; each run was
    trained by the first launch's job, once."""
    from ptychostab.launch import submitted

    args = ["-m", *CLUSTER, "cluster.gpus_per_node=1", "seed=range(3)", *TINY,
            "trainer.max_epochs=6", "failure.collapse_ssim=null", "failure.collapse_rel_std=null"]
    sweep_dir = tmp_path / "default"
    proc = train(args, tmp_path, wait=False)
    try:
        assert wait_for(lambda: any(_history_rows(d) >= 1 for d in run_dirs(sweep_dir)), 300)
        first = submitted.read(sweep_dir)
        assert len(first) == 3
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10
        assert proc.returncode == 143, out[-3000:]
        assert "launcher stopped by SIGTERM" in out and "run the same command again" in out
        rerun = train(args, tmp_path, timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        ids = {e["job_id"].split("_")[0] for e in submitted.read(sweep_dir).values()}
        if ids:
            subprocess.run(["scancel", *sorted(ids)], check=False)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    assert "Recognised" in rerun.stdout and "Submitted" not in rerun.stdout
    assert submitted.read(sweep_dir) == first  # nothing submitted again
    for run in run_dirs(sweep_dir):
        result = json.loads((run / records.RESULT).read_text())
        assert result["status"] == "ok", run
        manifest = json.loads((run / records.MANIFEST).read_text())
        assert len(manifest["segments"]) == 1  # trained once, by the first launch's job
        assert _slurm_job_id(run) == first[f"{run.parent.name}/{run.name}"]["job_id"]
