"""Trackers read back with each tool's own reader: what a run logged is what the tool shows."""

import csv
import glob
import struct

import pytest

from ptychostab.tracking import MissingTracker, RunIdentity, TrackerSet, check_available, flatten


def _identity(tmp_path, seed=0):
    run = tmp_path / "sw" / "hybrid-abc" / f"seed={seed}"
    run.mkdir(parents=True)
    return RunIdentity(sweep="sw", arm_id="hybrid_none_d4-abc", arm_label="hybrid_none_d4",
                       seed=seed, stage="A", depth=4, run_dir=run, output_root=tmp_path,
                       config={"arch": {"name": "hybrid", "hidden_channels": 8}, "seed": seed,
                               "clip": {"agc_exclude": ["head"], "value": None}})


def _drive(ts, epochs=2, steps_per_epoch=4, every=2, first_epoch=0):
    for e in range(first_epoch, first_epoch + epochs):
        for s in range(steps_per_epoch):
            g = e * steps_per_epoch + s + 1
            if g % every == 0:
                ts.log_step(g, {"train_loss": 1.0 / g, "grad_norm_pre": float(g),
                                "grad_norm_post": 1.0})
        ts.log_epoch({"epoch": e, "global_step": (e + 1) * steps_per_epoch,
                      "train_loss": 0.5 - 0.1 * e, "val_loss": 0.4 - 0.1 * e,
                      "grad_norm_pre_median": 2.0, "grad_norm_pre_max": 9.0, "lr": 1e-3,
                      "wall_s": 1.0 + e})


RESULT = {"status": "ok", "failure": None, "global_step": 8,
          "metrics": {"best_val_loss": 0.3, "amp_ssim": 0.9, "val_loss_name": "mae_val_loss"}}


def test_flatten_nested_config():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    assert flat == {"a/b": 1, "a/c": "[1, 2]", "d": "null"}


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingTracker, match=r"logger wandb needs the package 'wandb'.*"
                                             r"\[tracking\]"):
        check_available(["csv", "wandb"])
    check_available(["csv"])


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tracker.*neptune"):
        TrackerSet({"neptune": {}}, _identity(tmp_path))


def test_csv_logs_epochs_steps_result_and_survives_resume(tmp_path):
    ident = _identity(tmp_path)
    ts = TrackerSet({"csv": {}}, ident)
    ids = ts.start()
    assert ids == {"csv": {"dir": "csv"}}
    _drive(ts, epochs=1)
    ts.end({**RESULT, "status": "preempted"}, final=False)
    # the resumed segment reopens the same file and keeps the first segment's rows
    ts2 = TrackerSet({"csv": {}}, ident, resume=ids)
    ts2.start()
    _drive(ts2, epochs=1, first_epoch=1)
    ts2.end(RESULT, final=True)
    with open(ident.run_dir / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [r for r in rows if r.get("epoch/val_loss")]
    assert [float(r["epoch"]) for r in epochs] == [0.0, 1.0]
    assert [int(float(r["step"])) for r in epochs] == [4, 8]
    steps = [int(float(r["step"])) for r in rows if r.get("step/train_loss")]
    assert steps == [2, 4, 6, 8]
    assert any(r.get("result/amp_ssim") == "0.9" for r in rows)
    hparams = (ident.run_dir / "csv" / "hparams.yaml").read_text()
    assert "config/arch/hidden_channels: 8" in hparams and "run/stage: A" in hparams
    assert "result/status: ok" in hparams
    assert not (ident.run_dir / "lightning_logs").exists()


@pytest.mark.slow  # needs the [tracking] extra, which `make test-slow` installs first
def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ident = _identity(tmp_path)
    ts = TrackerSet({"tensorboard": {}}, ident)
    ids = ts.start()
    _drive(ts)
    ts.end(RESULT, final=True)
    acc = EventAccumulator(str(ident.run_dir / ids["tensorboard"]["dir"]))
    acc.Reload()
    val = [(e.step, round(e.value, 6)) for e in acc.Scalars("epoch/val_loss")]
    assert val == [(4, 0.4), (8, 0.3)]
    assert [e.step for e in acc.Scalars("step/grad_norm_pre")] == [2, 4, 6, 8]
    assert [e.value for e in acc.Scalars("result/amp_ssim")] == [pytest.approx(0.9)]


@pytest.mark.slow
def test_mlflow_local_store_one_experiment_per_sweep_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ident = _identity(tmp_path)
    ts = TrackerSet({"mlflow": {}}, ident)
    ids = ts.start()["mlflow"]
    assert ids["tracking_uri"] == f"file:{(tmp_path / 'mlruns').resolve()}"
    _drive(ts, epochs=1)
    ts.end({**RESULT, "status": "preempted"}, final=False)
    ts2 = TrackerSet({"mlflow": {}}, ident, resume={"mlflow": ids})
    assert ts2.start()["mlflow"]["run_id"] == ids["run_id"]
    _drive(ts2, epochs=1, first_epoch=1)
    ts2.end(RESULT, final=True)
    client = MlflowClient(ids["tracking_uri"])
    exp = client.get_experiment_by_name("sw")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [ids["run_id"]]  # one run across both segments
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["arm_id"] == "hybrid_none_d4-abc" and run.data.tags["seed"] == "0"
    assert run.data.tags["stage"] == "A" and run.data.tags["status"] == "ok"
    assert run.data.params["config/arch/hidden_channels"] == "8"
    hist = client.get_metric_history(ids["run_id"], "epoch/val_loss")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(4, 0.4), (8, 0.3)]
    assert run.data.metrics["result/amp_ssim"] == pytest.approx(0.9)


def _wandb_records(run_dir):
    """Records of an offline W&B run file (its LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    raw = open(path, "rb").read()
    pos, buf, block = 7, b"", 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        if kind == 2:
            buf = data
            continue
        if kind == 3:
            buf += data
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(buf + data if kind == 4 else data)
        buf = b""
        yield record


@pytest.mark.slow
def test_wandb_offline_run_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    ident = _identity(tmp_path)
    ts = TrackerSet({"wandb": {}}, ident)
    ids = ts.start()["wandb"]
    assert ids["mode"] == "offline"
    _drive(ts)
    ts.end(RESULT, final=True)
    history, config, summary, run = [], {}, {}, None
    for r in _wandb_records(ident.run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): i.value_json
                            for i in r.history.item})
        elif kind == "config":
            config.update({i.key: i.value_json for i in r.config.update})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): i.value_json
                            for i in r.summary.update})
        elif kind == "run":
            run = r.run
    assert run is not None and run.run_id == ids["id"] and run.run_group == "hybrid_none_d4-abc"
    assert config["run/arm_id"] == '"hybrid_none_d4-abc"' and config["run/seed"] == "0"
    assert config["config/arch/hidden_channels"] == "8"
    vals = [float(h["epoch/val_loss"]) for h in history if "epoch/val_loss" in h]
    assert vals == pytest.approx([0.4, 0.3])
    assert summary["result/status"] == '"ok"'


def test_a_missing_tracker_is_refused_at_compose_time_naming_the_extra(monkeypatch,
                                                                       trackers_installed):
    import importlib.util

    from ptychostab import config as cfgmod

    cfg = cfgmod.compose(["logger=[csv,wandb]", "data=tiny"])
    assert cfg.logger.wandb.enabled and cfg.logger.csv.enabled and cfg.logger.mlflow is None
    installed = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else installed(name, *a))
    with pytest.raises(cfgmod.ConfigError, match=r"logger.*wandb.*\[tracking\]"):
        cfgmod.validate(cfg)
    cfgmod.validate(cfgmod.compose(["logger=csv", "data=tiny"]))  # csv needs nothing extra


def test_logger_knobs_leave_the_arm_id_alone(trackers_installed):
    from ptychostab import config as cfgmod
    from ptychostab import identity

    ids = {identity.arm_id(cfgmod.compose(o)) for o in (
        ["data=tiny"], ["data=tiny", "logger=many"], ["data=tiny", "logger=none"],
        ["data=tiny", "diagnostics.every_n_epochs=0"], ["data=tiny", "trainer.progress=none"],
        ["data=tiny", "trainer.log_every_n_steps=100"])}
    assert len(ids) == 1
