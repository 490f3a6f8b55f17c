"""One job end to end, in process: records, rerun/skip, determinism, failures, preemption."""

import logging
import math
import os
import signal

import numpy as np
import pytest
import torch

from ptychostab.runs import records
from ptychostab.runs.checkpoint import load_checkpoint
from ptychostab.runs.job import RECON, run_job
from ptychostab.training.module import PtychoModule
from ptychostab.training.monitors import TrainingFailure

ARM = {"arch": "hybrid", "clip": "none"}


def run(cfg, run_dir):
    return run_job(cfg, run_dir=run_dir, arm=ARM, arm_id="hybrid-abc123",
                   overrides=["arch=hybrid"])


def history(run_dir, drop=("wall_s",)):
    rows = records.read_history(run_dir / records.HISTORY).data
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def same_histories(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == rb[k] or (math.isnan(ra[k]) and math.isnan(rb[k])), (k, ra, rb)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One ordinary 2-epoch run shared by the read-only tests below."""
    from ptychostab.training.testing import tiny_config

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    cfg = tiny_config(**{"clip.algorithm": "agc", "clip.value": 0.05})
    return cfg, run_dir, run(cfg, run_dir)


def test_fresh_run_writes_every_record(finished):
    cfg, run_dir, result = finished
    assert result["status"] == "ok" and result["failure"] is None
    assert records.read_json(run_dir / records.RESULT).data == result
    manifest = records.read_json(run_dir / records.MANIFEST).data
    assert set(records.MANIFEST_KEYS) <= set(manifest)
    assert manifest["arm"] == ARM and manifest["overrides"] == ["arch=hybrid"]
    assert manifest["config"]["clip"]["algorithm"] == "agc" and manifest["seed"] == 0
    assert manifest["effective"]["clip"]["algorithm"] == "agc"
    assert manifest["effective"]["generator"]["channels"] == [4, 8]
    assert set(manifest["git"]) == {"commit", "dirty"}
    assert set(manifest["slurm"]) == {"SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
                                      "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"}
    header = (run_dir / records.HISTORY).read_text().splitlines()[0].split(",")
    assert tuple(header[:len(records.HISTORY_COLUMNS)]) == records.HISTORY_COLUMNS
    rows = history(run_dir, drop=())
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["global_step"] == 8
    assert all(r["grad_norm_post_max"] <= r["grad_norm_pre_max"] for r in rows)
    m = result["metrics"]
    for key in ("val_loss_name", "best_val_loss", "final_val_loss", "amp_ssim", "phase_ssim",
                "amp_mae", "phase_mae", "amp_psnr", "phase_psnr", "phase_truth_constant"):
        assert key in m
    assert m["val_loss_name"] == "mae_val_loss" and m["final_val_loss"] == rows[-1]["val_loss"]
    assert result["metrics_best"]["epoch"] == m["best_epoch"]
    assert result["epochs_completed"] == 2 and result["global_step"] == 8
    assert result["params"]["numel"] > 0 and result["peak_memory_bytes"] > 0
    with np.load(run_dir / RECON) as z:
        assert z["pred"].shape == z["truth"].shape and z["pred"].ndim == 2
        assert np.iscomplexobj(z["pred"]) and np.iscomplexobj(z["truth"])
    assert load_checkpoint(run_dir / records.LAST_CKPT)["training"]["epoch"] == 2
    assert (run_dir / records.BEST_CKPT).exists()


def test_rerun_of_a_finished_job_trains_nothing(finished, monkeypatch, caplog):
    cfg, run_dir, result = finished
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()}

    def boom(*a, **k):
        raise AssertionError("a finished job must not be set up again")

    monkeypatch.setattr("ptychostab.runs.job.Job.setup", boom)
    with caplog.at_level(logging.INFO, logger="ptychostab.runs.job"):
        again = run(cfg, run_dir)
    assert again == result
    assert f"SKIP {run_dir}: already ok" in caplog.text
    assert before == {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()}


def test_same_seed_same_history_other_seed_differs(finished, make_cfg, tmp_path):
    cfg, run_dir, _ = finished
    run(cfg, tmp_path / "again")
    same_histories(history(tmp_path / "again"), history(run_dir))
    other = make_cfg(**{"clip.algorithm": "agc", "clip.value": 0.05, "seed": 1})
    run(other, tmp_path / "seed1")
    assert history(tmp_path / "seed1")[0]["train_loss"] != history(run_dir)[0]["train_loss"]


@pytest.mark.parametrize("sync_every, stopped_at", [(1, 6), (4, 8), (50, 8)])
def test_nan_at_step_k_is_nonfinite_at_step_k(make_cfg, tmp_path, sync_every, stopped_at):
    k = 5  # epoch 1 (4 steps per epoch)
    cfg = make_cfg(**{"failure.test_inject_nan_step": k, "trainer.sync_every": sync_every,
                      "trainer.max_epochs": 4})
    result = run(cfg, tmp_path)
    assert result["status"] == "nonfinite"
    f = result["failure"]
    assert (f["kind"], f["step"], f["epoch"]) == ("nonfinite", k, 1) and f["wall_s"] > 0
    assert result["global_step"] == stopped_at  # stopped at the next sync (within k steps)
    rows = history(tmp_path)
    assert [r["epoch"] for r in rows] == [0, 1] and math.isnan(rows[-1]["val_loss"])
    assert result["metrics"]["val_loss_name"] == "mae_val_loss"


def test_diverged_by_grad_norm_bound(make_cfg, tmp_path):
    cfg = make_cfg(**{"failure.grad_norm_bound": 1e-9, "failure.patience_steps": 3,
                      "trainer.sync_every": 1})
    result = run(cfg, tmp_path)
    assert result["status"] == "diverged"
    assert (result["failure"]["step"], result["failure"]["epoch"]) == (2, 0)
    assert result["global_step"] == 3


def test_collapsed_at_validation_and_at_the_end(make_cfg, tmp_path):
    result = run(make_cfg(**{"failure.collapse_rel_std": 1e9}), tmp_path / "val")
    assert result["status"] == "collapsed" and result["failure"]["epoch"] == 0
    assert "std/mean" in result["failure"]["message"] and result["epochs_completed"] == 1
    result = run(make_cfg(**{"failure.collapse_ssim": 1.0}), tmp_path / "end")
    assert result["status"] == "collapsed" and "SSIM" in result["failure"]["message"]
    assert result["epochs_completed"] == 2 and result["metrics"]["amp_ssim"] < 1.0


def test_exception_is_recorded_with_traceback(make_cfg, tmp_path):
    result = run(make_cfg(**{"failure.test_inject_exception_step": 2}), tmp_path)
    assert result["status"] == "exception"
    assert result["failure"]["step"] == 2 and "injected" in result["failure"]["message"]
    assert "injected test exception" in (tmp_path / records.TRACEBACK).read_text()


def test_strict_reraises_after_recording(make_cfg, tmp_path):
    with pytest.raises(RuntimeError, match="injected"):
        run(make_cfg(**{"failure.test_inject_exception_step": 0, "strict": True}), tmp_path)
    assert records.read_json(tmp_path / records.RESULT).data["status"] == "exception"
    with pytest.raises(TrainingFailure):
        run(make_cfg(**{"failure.test_inject_nan_step": 0, "strict": True}), tmp_path / "n")
    assert records.read_json(tmp_path / "n" / records.RESULT).data["status"] == "nonfinite"


def test_out_of_memory_is_oom(make_cfg, tmp_path, monkeypatch):
    def oom(self, batch, batch_idx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")

    monkeypatch.setattr(PtychoModule, "training_step", oom)
    result = run(make_cfg(), tmp_path)
    assert result["status"] == "oom" and "18.00 GiB" in result["failure"]["message"]


def test_bad_config_is_an_exception_result(make_cfg, tmp_path):
    result = run(make_cfg(**{"arch.gamma_init": 0.5}), tmp_path)  # hybrid has no gamma
    assert result["status"] == "exception" and "gamma_init" in result["failure"]["message"]
    assert records.read_json(tmp_path / records.MANIFEST).ok


def test_preemption_saves_chains_and_resumes_exactly(make_cfg, tmp_path, monkeypatch):
    """USR2 mid-epoch: last.ckpt at that step, result `preempted`, the previous handler is
    called (submitit's requeue), handlers restored; the rerun finishes with the very same
    history as an uninterrupted run."""
    cfg = make_cfg(**{"trainer.max_epochs": 3})
    run(cfg, tmp_path / "reference")

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    real_step = PtychoModule.training_step

    def step(self, batch, batch_idx):
        if self.global_step_count == 6:
            os.kill(os.getpid(), signal.SIGUSR2)
        return real_step(self, batch, batch_idx)

    try:
        monkeypatch.setattr(PtychoModule, "training_step", step)
        result = run(cfg, tmp_path / "run")
        handler_after = signal.getsignal(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [signal.SIGUSR2]
    assert handler_after.__name__ == "<lambda>"  # the test's handler is back
    assert result["status"] == "preempted"
    assert (result["failure"]["step"], result["failure"]["epoch"]) == (6, 1)
    ckpt = load_checkpoint(tmp_path / "run" / records.LAST_CKPT)
    assert ckpt["reason"] == "preempted" and ckpt["training"]["step_in_epoch"] == 2

    monkeypatch.setattr(PtychoModule, "training_step", real_step)
    resumed = run(cfg, tmp_path / "run")
    assert resumed["status"] == "ok" and resumed["global_step"] == 12
    same_histories(history(tmp_path / "run"), history(tmp_path / "reference"))
    manifest = records.read_json(tmp_path / "run" / records.MANIFEST).data
    assert manifest["segments"][-1]["resumed_from"]["global_step"] == 6
    assert len(manifest["segments"]) == 2
