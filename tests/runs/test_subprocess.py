"""The job as a process (``python -m ptychostab.runs.job``): exit codes, SIGKILL, SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ptychostab.runs import records
from ptychostab.runs.checkpoint import load_checkpoint
from ptychostab.runs.job import run_job

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


def start(cfg, tmp_path, run_dir):
    from omegaconf import OmegaConf

    config = tmp_path / "config.yaml"
    OmegaConf.save(cfg, config)
    return subprocess.Popen(
        [sys.executable, "-m", "ptychostab.runs.job", "--config", str(config),
         "--run-dir", str(run_dir), "--arm-id", "proc"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epochs(proc, run_dir, n, timeout=120):
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
def slow_cfg_and_reference(tmp_path_factory):
    """4 epochs of 49 one-sample steps (a few tenths of a second each) and the history of an
    uninterrupted run of it."""
    from ptychostab.training.testing import tiny_config

    cfg = tiny_config(**{"trainer.batch_size": 1, "trainer.max_epochs": 4})
    ref = tmp_path_factory.mktemp("reference")
    run_job(cfg, run_dir=ref, arm={}, arm_id="proc", overrides=[])
    return cfg, rows(ref)


def test_failed_run_exits_zero(make_cfg, tmp_path):
    proc = start(make_cfg(**{"failure.test_inject_exception_step": 1}), tmp_path, tmp_path / "r")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert records.read_json(tmp_path / "r" / records.RESULT).data["status"] == "exception"
    assert "status: exception" in out


def test_sigkill_mid_epoch_then_rerun_resumes_from_last_ckpt(slow_cfg_and_reference, tmp_path):
    cfg, reference = slow_cfg_and_reference
    run_dir = tmp_path / "run"
    proc = start(cfg, tmp_path, run_dir)
    wait_for_epochs(proc, run_dir, 1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / records.RESULT).exists()
    killed_at = load_checkpoint(run_dir / records.LAST_CKPT)["training"]["epoch"]
    assert 1 <= killed_at < 4

    result = run_job(cfg, run_dir=run_dir, arm={}, arm_id="proc", overrides=[])
    assert result["status"] == "ok" and result["epochs_completed"] == 4
    assert rows(run_dir) == reference  # every epoch once, and the same numbers
    resumed = records.read_json(run_dir / records.MANIFEST).data["segments"][-1]["resumed_from"]
    assert resumed["epoch"] == killed_at and resumed["reason"] == "epoch_end"


def test_sigterm_saves_records_preempted_and_exits_143(slow_cfg_and_reference, tmp_path):
    cfg, reference = slow_cfg_and_reference
    run_dir = tmp_path / "run"
    proc = start(cfg, tmp_path, run_dir)
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
