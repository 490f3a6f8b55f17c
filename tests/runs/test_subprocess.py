"""The job as a process (``python -m ptychostab.runs.job``): exit codes, SIGKILL, SIGTERM,
SIGINT, and ``run.lock`` against a second run of the same folder.

The four processes start together (module fixture) so that their imports of torch and
Lightning overlap: the suite pays for one process start, not three.
"""

import signal
import subprocess
import sys
import time

import pytest

from ptychostab.diagnostics.drift import ACTIVATIONS, read_activations
from ptychostab.runs import records
from ptychostab.runs.checkpoint import load_checkpoint
from ptychostab.runs.job import run_job
from ptychostab.runs.lock import RunLocked, read_lock

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


# Imports first, then waits for a "go" file before calling the same main() as `-m`: the
# processes' slow imports overlap, and each test starts its own job when it is ready for it.
GATED = """
import os, sys, time
from ptychostab.runs.job import main
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


def start(cfg, tmp_path, run_dir, gated=False):
    from omegaconf import OmegaConf

    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "config.yaml"
    OmegaConf.save(cfg, config)
    args = ["--config", str(config), "--run-dir", str(run_dir), "--arm-id", "proc"]
    head = ["-c", GATED, str(tmp_path / "go")] if gated else ["-m", "ptychostab.runs.job"]
    return subprocess.Popen([sys.executable, *head, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def go(run_dir):
    (run_dir.parent / "go").touch()


def wait_for_epochs(proc, run_dir, n, timeout=180):
    """Block until history.csv holds ``n`` rows (the process is then inside epoch ``n``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = records.read_history(run_dir / records.HISTORY).data
        if len(rows) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended early:\n{proc.stdout.read()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out waiting for the first epoch")


def rows(run_dir):
    return [{k: v for k, v in r.items() if k != "wall_s"}
            for r in records.read_history(run_dir / records.HISTORY).data]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Four job processes started at once, plus the history of an uninterrupted in-process
    run of the slow config (4 epochs of 49 one-sample steps, a few tenths of a second each)."""
    from ptychostab.training.testing import tiny_config

    root = tmp_path_factory.mktemp("procs")
    slow = tiny_config(**{"trainer.batch_size": 1, "trainer.max_epochs": 4})
    failing = tiny_config(**{"failure.test_inject_exception_step": 1})
    procs = {name: (start(cfg, root / name, root / name / "run", gated=name != "failing"),
                    root / name / "run")
             for name, cfg in (("failing", failing), ("kill", slow), ("term", slow),
                               ("int", slow))}
    ref = root / "reference"
    run_job(slow, run_dir=ref, arm={}, arm_id="proc", overrides=[])
    yield slow, rows(ref), procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_failed_run_exits_zero(jobs):
    proc, run_dir = jobs[2]["failing"]
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert records.read_json(run_dir / records.RESULT).data["status"] == "exception"
    assert "status: exception" in out


def test_sigkill_mid_epoch_then_rerun_resumes_from_last_ckpt(jobs):
    cfg, reference, procs = jobs
    proc, run_dir = procs["kill"]
    go(run_dir)
    wait_for_epochs(proc, run_dir, 1)
    # the same job again while the first is alive: refused, naming the holder
    lock = read_lock(run_dir / records.RUN_LOCK)
    segments = len(records.read_json(run_dir / records.MANIFEST).data["segments"])
    with pytest.raises(RunLocked, match=f"in use by pid {proc.pid} on host "):
        run_job(cfg, run_dir=run_dir, arm={}, arm_id="proc", overrides=[])
    assert lock["pid"] == proc.pid and "slurm_job_id" in lock and lock["pack_id"] is None
    assert read_lock(run_dir / records.RUN_LOCK)["token"] == lock["token"]
    assert len(records.read_json(run_dir / records.MANIFEST).data["segments"]) == segments
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / records.RESULT).exists()
    assert read_lock(run_dir / records.RUN_LOCK)["pid"] == proc.pid  # left by the dead one
    killed_at = load_checkpoint(run_dir / records.LAST_CKPT)["training"]["epoch"]
    assert 1 <= killed_at < 4

    result = run_job(cfg, run_dir=run_dir, arm={}, arm_id="proc", overrides=[])
    assert result["status"] == "ok" and result["epochs_completed"] == 4
    assert rows(run_dir) == reference  # every epoch once, and the same numbers
    # the drift probe's file too: every epoch once (-1 = init), the uninterrupted run's numbers
    acts = read_activations(run_dir / ACTIVATIONS)
    assert sorted({r["epoch"] for r in acts}) == [-1, 0, 1, 2, 3]
    assert acts == read_activations(run_dir.parent.parent / "reference" / ACTIVATIONS)
    assert not (run_dir / records.RUN_LOCK).exists()
    assert f"took over the stale run.lock of pid {proc.pid}" in (
        run_dir / records.RUN_LOG).read_text()
    resumed = records.read_json(run_dir / records.MANIFEST).data["segments"][-1]["resumed_from"]
    assert resumed["epoch"] == killed_at and resumed["reason"] == "epoch_end"


def test_sigterm_saves_records_preempted_and_exits_143(jobs):
    cfg, reference, procs = jobs
    proc, run_dir = procs["term"]
    go(run_dir)
    wait_for_epochs(proc, run_dir, 1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    result = records.read_json(run_dir / records.RESULT).data
    assert result["status"] == "preempted" and result["failure"]["kind"] == "preempted"
    assert "SIGTERM" in result["failure"]["message"]
    ckpt = load_checkpoint(run_dir / records.LAST_CKPT)
    assert ckpt["reason"] == "preempted"
    assert ckpt["training"]["global_step"] == result["failure"]["step"]

    result = run_job(cfg, run_dir=run_dir, arm={}, arm_id="proc", overrides=[])
    assert result["status"] == "ok" and result["global_step"] == 4 * 49
    assert rows(run_dir) == reference


def test_sigint_saves_records_interrupted_exits_130_and_resumes(jobs):
    cfg, reference, procs = jobs
    proc, run_dir = procs["int"]
    go(run_dir)
    wait_for_epochs(proc, run_dir, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "status: interrupted" in out
    result = records.read_json(run_dir / records.RESULT).data
    assert result["status"] == "interrupted" and "SIGINT" in result["failure"]["message"]
    assert not records.is_final(result["status"])
    ckpt = load_checkpoint(run_dir / records.LAST_CKPT)
    assert ckpt["reason"] == "interrupted"
    assert ckpt["training"]["global_step"] == result["failure"]["step"]
    assert not (run_dir / records.RUN_LOCK).exists()  # released before KeyboardInterrupt

    result = run_job(cfg, run_dir=run_dir, arm={}, arm_id="proc", overrides=[])
    assert result["status"] == "ok" and result["global_step"] == 4 * 49
    assert rows(run_dir) == reference  # resumed mid-epoch, bit-identically
    resumed = records.read_json(run_dir / records.MANIFEST).data["segments"][-1]["resumed_from"]
    assert resumed["reason"] == "interrupted"
