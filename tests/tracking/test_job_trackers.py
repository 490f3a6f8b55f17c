"""Trackers through real jobs: a resumed run continues its tracker runs; a restart starts new
ones."""

import pytest

from ptychostab.runs import records
from ptychostab.runs.job import run_job

pytestmark = pytest.mark.slow  # MLflow's import alone takes seconds


def _cfg(make_cfg, tmp_path):
    cfg = make_cfg(**{"trainer.max_epochs": 2, "sweep": "trk"})
    cfg.paths.output_root = str(tmp_path)
    cfg.logger = {"tensorboard": {}, "mlflow": {}}
    cfg.diagnostics = {"every_n_epochs": 0}
    cfg.trainer.progress = "none"
    return cfg


def _run(cfg, run_dir):
    return run_job(cfg, run_dir=run_dir, arm={}, arm_id="hybrid_none_d2-abc", overrides=[])


def test_resume_continues_and_restart_renews_the_tracker_runs(make_cfg, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(make_cfg, tmp_path)
    run = tmp_path / "trk" / "hybrid_none_d2-abc" / "seed=0"
    assert _run(cfg, run)["status"] == "ok"
    first = records.read_json(run / records.MANIFEST).data["trackers"]
    uri = first["mlflow"]["tracking_uri"]
    assert uri == f"file:{(tmp_path / 'mlruns').resolve()}"

    # killed after the last checkpoint, before result.json: the rerun is the same tracker run
    (run / records.RESULT).unlink()
    assert _run(cfg, run)["status"] == "ok"
    manifest = records.read_json(run / records.MANIFEST).data
    assert len(manifest["segments"]) == 2
    assert manifest["trackers"]["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("trk")
    assert len(client.search_runs([exp.experiment_id])) == 1
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("epoch/val_loss")] == [4, 8]  # the same folder

    # a damaged checkpoint: the run restarts from scratch, in new tracker runs
    (run / records.RESULT).unlink()
    (run / records.LAST_CKPT).write_bytes(b"damaged")
    assert _run(cfg, run)["status"] == "ok"
    after = records.read_json(run / records.MANIFEST).data["trackers"]
    assert after["mlflow"]["run_id"] != first["mlflow"]["run_id"]
    assert after["mlflow"]["restarted"] is True
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    old = client.get_run(first["mlflow"]["run_id"])
    assert old.data.tags["status"] == "ok"  # it had ended; the restart starts a new one
    new = client.get_run(after["mlflow"]["run_id"])
    assert new.data.tags["seed"] == "0" and new.info.status == "FINISHED"
    assert "new tracker runs after a restart" in (run / records.RUN_LOG).read_text()
