"""The per-run sinks through a real job: the drift probe, trackers, progress, the diagnose CLI."""

import io
import logging

import pytest
import torch
from omegaconf import OmegaConf

from ptychostab.cli import diagnose
from ptychostab.diagnostics.drift import ACTIVATIONS, read_activations
from ptychostab.runs import records
from ptychostab.runs.checkpoint import load_checkpoint
from ptychostab.runs.job import run_job
from ptychostab.runs.sinks import (
    ActivationSink,
    ProgressSink,
    TrackerSink,
    build_sinks,
    logger_settings,
    progress_mode,
)


def _cfg(make_cfg, every=1, logger=None, progress="log", **over):
    cfg = make_cfg(**{"trainer.max_epochs": 3, **over})
    cfg.diagnostics = {"every_n_epochs": every}
    cfg.logger = logger or {}
    cfg.trainer.progress = progress
    return cfg


def _run(cfg, run_dir):
    return run_job(cfg, run_dir=run_dir, arm={}, arm_id="hybrid_none_d2-abc", overrides=[])


def _weights(run_dir):
    return load_checkpoint(run_dir / records.LAST_CKPT)["training"]["generator"]


def _losses(run_dir):
    return [(r["train_loss"], r["val_loss"])
            for r in records.read_history(run_dir / records.HISTORY).data]


def test_build_sinks_follows_the_knobs(make_cfg):
    kinds = lambda cfg: [type(s) for s in build_sinks(cfg)]  # noqa: E731
    assert kinds(_cfg(make_cfg)) == [ActivationSink, ProgressSink]
    assert kinds(_cfg(make_cfg, every=0, progress="none")) == []
    both = _cfg(make_cfg, logger={"csv": {}, "tensorboard": None}, progress="none")
    assert kinds(both) == [ActivationSink, TrackerSink]
    assert logger_settings(both) == {"csv": {}}
    assert build_sinks(_cfg(make_cfg, every=2))[0].every == 2
    assert progress_mode("auto", io.StringIO()) == "log"
    tty = io.StringIO()
    tty.isatty = lambda: True
    assert progress_mode("auto", tty) == "bar" and progress_mode("none", tty) == "none"


def test_probe_records_every_epoch_and_changes_nothing(make_cfg, tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    assert _run(_cfg(make_cfg, every=1), on)["status"] == "ok"
    assert _run(_cfg(make_cfg, every=0), off)["status"] == "ok"
    rows = read_activations(on / ACTIVATIONS)
    assert sorted({r["epoch"] for r in rows}) == [-1, 0, 1, 2]
    n_blocks = len({r["block"] for r in rows})
    assert n_blocks == 3 and len(rows) == 4 * n_blocks  # depth 2 + bottleneck
    assert not (off / ACTIVATIONS).exists()
    # bit-identical losses and weights with the probe on and off
    assert _losses(on) == _losses(off)
    w_on, w_off = _weights(on), _weights(off)
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)


def test_every_n_epochs_thins_the_probe(make_cfg, tmp_path):
    _run(_cfg(make_cfg, every=2), tmp_path / "r")
    assert sorted({r["epoch"] for r in read_activations(tmp_path / "r" / ACTIVATIONS)}) == [-1, 1]


def test_probe_batch_is_the_same_across_arms_and_seeds(make_cfg, tmp_path):
    """Same data config -> the same 16 probe patterns, whatever the arm and the seed."""
    from ptychostab.runs import job as job_mod
    from ptychostab.runs.signals import PreemptionGuard

    batches = []
    for k, over in enumerate(({"seed": 0}, {"seed": 7, "arch.name": "stable_hybrid"},
                              {"seed": 3, "clip.algorithm": "agc", "clip.value": 0.01})):
        job = job_mod.Job(_cfg(make_cfg, **over), tmp_path / f"r{k}", {}, "a", [],
                           PreemptionGuard())
        job.run_dir.mkdir(parents=True)
        job.setup()
        sink = next(s for s in job.rec.sinks if isinstance(s, ActivationSink))
        batches.append(sink.log.probe.batch)
        job.rec.end(None)
    assert batches[0].shape[0] == 9  # the tiny set has 9 validation patterns: all of them
    assert all(torch.equal(batches[0], b) for b in batches[1:])
    big = _cfg(make_cfg, **{"data.size": 64})  # more test patterns: 16 of them, spread out
    job = job_mod.Job(big, tmp_path / "big", {}, "a", [], PreemptionGuard())
    job.run_dir.mkdir(parents=True)
    job.setup()
    sink = next(s for s in job.rec.sinks if isinstance(s, ActivationSink))
    n_val = job.module.val_data.shape[0]
    assert n_val > 16 and sink.log.probe.batch.shape[0] == 16
    from ptychostab.diagnostics.drift import probe_indices

    idx = torch.as_tensor(probe_indices(n_val))
    assert torch.equal(sink.log.probe.batch, job.module.val_data[idx])
    job.rec.end(None)


def test_a_failed_run_keeps_the_rows_before_its_failure(make_cfg, tmp_path):
    # 49 train patterns / batch 16 -> 4 steps per epoch; NaN at step 9 = inside epoch 2
    cfg = _cfg(make_cfg, **{"failure.test_inject_nan_step": 9, "trainer.sync_every": 1})
    assert _run(cfg, tmp_path / "r")["status"] == "nonfinite"
    assert sorted({r["epoch"] for r in read_activations(tmp_path / "r" / ACTIVATIONS)}) == [
        -1, 0, 1]


def test_rows_lost_between_checkpoint_and_file_are_remeasured(make_cfg, tmp_path):
    run = tmp_path / "r"
    _run(_cfg(make_cfg), run)
    full = read_activations(run / ACTIVATIONS)
    # killed after the last epoch's last.ckpt, before its activations rows and result.json
    (run / records.RESULT).unlink()
    text = (run / ACTIVATIONS).read_text().splitlines()
    (run / ACTIVATIONS).write_text("\n".join(line for line in text
                                             if not line.startswith("2,")) + "\n")
    assert len(read_activations(run / ACTIVATIONS)) < len(full)
    result = _run(_cfg(make_cfg), run)
    assert result["status"] == "ok" and result["epochs_completed"] == 3
    assert read_activations(run / ACTIVATIONS) == full


def test_restart_after_a_damaged_checkpoint_resets_the_file(make_cfg, tmp_path):
    run = tmp_path / "r"
    cfg = _cfg(make_cfg)
    _run(cfg, run)
    full = read_activations(run / ACTIVATIONS)
    (run / records.RESULT).unlink()
    (run / records.LAST_CKPT).write_bytes(b"truncated")
    assert _run(cfg, run)["status"] == "ok"
    assert read_activations(run / ACTIVATIONS) == full  # a fresh run's rows, once each
    assert list(run.glob(f"{ACTIVATIONS}.restart-*"))  # the old file was set aside, kept


def test_diagnose_reads_the_run_folder(make_cfg, tmp_path, capsys):
    run = tmp_path / "r"
    _run(_cfg(make_cfg), run)
    assert diagnose.main(["activations", "--run", str(run)]) == 0
    out = run / "diagnostics" / "activations.json"
    import json

    report = json.loads(out.read_text())
    assert report["summary"]["weights"] == str(run / records.LAST_CKPT)
    assert len(report["blocks"]) == 3
    assert diagnose.main(["activations", "--run", str(run), "--best",
                          "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "activations.json").read_text())["summary"][
        "weights"] == str(run / records.BEST_CKPT)
    assert diagnose.main(["activations", "--run", str(run), "--epochs"]) == 0
    assert (run / "diagnostics" / "activations_epochs.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch   2 block" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        diagnose.main(["activations", "--epochs", "--out", str(tmp_path)])  # needs --run


def test_csv_tracker_through_a_job_and_its_resume(make_cfg, tmp_path):
    run = tmp_path / "r"
    cfg = _cfg(make_cfg, logger={"csv": {}}, **{"trainer.sync_every": 2})
    result = _run(cfg, run)
    manifest = records.read_json(run / records.MANIFEST).data
    assert manifest["trackers"] == {"csv": {"dir": "csv"}}
    text = (run / "csv" / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    for key in ("epoch/train_loss", "epoch/val_loss", "epoch/grad_norm_pre_max", "epoch/lr",
                "epoch/wall_s", "step/train_loss", "step/grad_norm_pre", "result/amp_ssim"):
        assert key in header, key
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert "run/arm_id: hybrid_none_d2-abc" in hparams and "run/seed: 0" in hparams
    assert "config/arch/hidden_channels: 4" in hparams and "result/status: ok" in hparams
    assert result["global_step"] == 12
    assert not (run / "lightning_logs").exists()


def test_progress_log_line_has_rate_and_eta(make_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ptychostab.runs.sinks"):
        _run(_cfg(make_cfg), tmp_path / "r")
    lines = [r.getMessage() for r in caplog.records if r.name == "ptychostab.runs.sinks"]
    assert len([line for line in lines if line.startswith("epoch ")]) == 3
    assert "epoch 3/3: train" in lines[-1] and "steps/s, ETA 0:00" in lines[-1]
    assert "step 12/12" in lines[-1] and "\r" not in "".join(lines)


def test_progress_bar_on_a_terminal(make_cfg, tmp_path, monkeypatch):
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr("sys.stderr", tty)
    _run(_cfg(make_cfg, progress="auto", **{"trainer.sync_every": 2}), tmp_path / "r")
    bar = tty.getvalue()
    assert "12/12" in bar and "epoch=3/3" in bar and "loss=" in bar and "gnorm=" in bar


def test_knobs_are_run_only(make_cfg):
    from ptychostab import identity

    base = _cfg(make_cfg)
    other = _cfg(make_cfg, every=0, logger={"csv": {}}, progress="none")
    other.trainer.log_every_n_steps = 100
    assert identity.identity_config(OmegaConf.to_container(base)) == identity.identity_config(
        OmegaConf.to_container(other))


def test_lightning_noise_is_silenced_where_it_arises(make_cfg, tmp_path, caplog, monkeypatch):
    import shutil
    import warnings

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda c, *a, **k: "/usr/bin/srun" if c == "srun"
                        else real_which(c, *a, **k))
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        _run(_cfg(make_cfg), tmp_path / "r")
    text = " ".join([str(w.message) for w in seen] + [r.getMessage() for r in caplog.records])
    for noise in ("srun", "Tip:", "litlogger", "GPU available", "Trainer.fit` stopped",
                  "smaller than the logging interval"):
        assert noise not in text, noise
    assert "epoch 3/3" in text  # our own lines still show
    assert not (tmp_path / "r" / "lightning_logs").exists()
    # outside the job, Lightning's own warnings are untouched (silenced locally, not globally)
    from lightning.pytorch.utilities.rank_zero import rank_zero_warn

    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        rank_zero_warn("The `srun` command is available on your system but is not used.")
    assert len(after) == 1


def test_composed_knobs_reach_the_sinks(trackers_installed):
    from ptychostab import config as cfgmod

    def sinks(*o):
        return build_sinks(cfgmod.to_plain(cfgmod.compose(["data=tiny", *o])))

    default = sinks()
    assert [type(s) for s in default] == [ActivationSink, TrackerSink, ProgressSink]
    assert default[1].settings == {"csv": {}} and default[0].every == 1
    many = sinks("logger=many", "trainer.sync_every=10", "trainer.log_every_n_steps=30",
                 "diagnostics.every_n_epochs=5", "trainer.progress=bar")
    assert set(many[1].settings) == {"csv", "tensorboard", "mlflow", "wandb"}
    assert many[1].settings["wandb"]["project"] == "ptychostab" and many[1].every == 30
    assert many[0].every == 5 and many[2].mode == "bar"
    assert sinks("trainer.sync_every=10")[1].every == 10  # null: every sync point
    assert [type(s) for s in sinks("logger=none", "diagnostics.every_n_epochs=0",
                                   "trainer.progress=none")] == []
