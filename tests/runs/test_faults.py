"""Infrastructure faults, interrupts and reruns, in process: each fault reproduced, its record
checked (status, cause, nothing earlier overwritten) and the rerun's result compared with an
uninterrupted run of the same seed."""

import errno
import json
import math
import os
import shutil
import signal

import pytest
import torch
from omegaconf import OmegaConf

from ptychostab.diagnostics.drift import ACTIVATIONS, read_activations, write_activations
from ptychostab.runs import job as job_mod
from ptychostab.runs import records
from ptychostab.runs.checkpoint import atomic_torch_save, load_checkpoint
from ptychostab.runs.lock import RunLock, RunLocked
from ptychostab.runs.recorder import RunRecorder
from ptychostab.training.module import PtychoModule

ARM = {"arch": "hybrid"}


def run(cfg, run_dir):
    return job_mod.run_job(cfg, run_dir=run_dir, arm=ARM, arm_id="hybrid-x", overrides=[])


def rows(run_dir):
    return [{k: v for k, v in r.items() if k != "wall_s"}
            for r in records.read_history(run_dir / records.HISTORY).data]


def same_rows(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        assert all(ra[k] == rb[k] or (math.isnan(ra[k]) and math.isnan(rb[k])) for k in ra)


def result(run_dir):
    return records.read_json(run_dir / records.RESULT).data


def stop_at_step(monkeypatch, step, signum):
    real = PtychoModule.training_step

    def patched(self, batch, batch_idx):
        if self.global_step_count == step:
            os.kill(os.getpid(), signum)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(PtychoModule, "training_step", patched)
    return real


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 3-epoch reference run (4 steps an epoch) and a run preempted at step 6 (epoch 1,
    batch 2): its folder is copied by the tests that need a resumable record."""
    from ptychostab.training.testing import tiny_config

    root = tmp_path_factory.mktemp("faults")
    cfg = tiny_config(**{"trainer.max_epochs": 3})
    reference = run(cfg, root / "reference")
    assert reference["status"] == "ok" and reference["global_step"] == 12
    mp = pytest.MonkeyPatch()
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        stop_at_step(mp, 6, signal.SIGUSR2)
        assert run(cfg, root / "preempted")["status"] == "preempted"
    finally:
        mp.undo()
        signal.signal(signal.SIGUSR2, previous)
    return cfg, root, reference


def copy_preempted(base, tmp_path):
    cfg, root, reference = base
    run_dir = tmp_path / "run"
    shutil.copytree(root / "preempted", run_dir)
    return cfg, run_dir, reference, root / "reference"


def test_resume_after_the_last_epoch_trains_no_further_epoch(base, tmp_path):
    """Killed after the last epoch's last.ckpt, before result.json: the rerun evaluates and
    records, it does not train a 4th epoch."""
    cfg, root, reference = base
    run_dir = tmp_path / "run"
    shutil.copytree(root / "reference", run_dir)
    (run_dir / records.RESULT).unlink()
    again = run(cfg, run_dir)
    assert again["status"] == "ok" and again["epochs_completed"] == 3
    assert again["global_step"] == reference["global_step"] == 12
    assert len(rows(run_dir)) == 3
    same_rows(rows(run_dir), rows(root / "reference"))
    for key in ("best_val_loss", "final_val_loss", "amp_ssim", "phase_mae"):
        assert again["metrics"][key] == reference["metrics"][key], key
    assert again["metrics_best"] == reference["metrics_best"]
    log = (run_dir / records.RUN_LOG).read_text()
    assert log.count("=== ") == 4  # two segments, each opened and closed in run.log
    assert "RESUME" in log and "epoch 3/3:" in log and not (run_dir / records.RUN_LOCK).exists()


@pytest.mark.parametrize("status", records.ALL_STATUSES)
def test_final_statuses_are_skipped_and_the_others_resumed(base, tmp_path, status):
    cfg, root, _ = base
    run_dir = tmp_path / "run"
    shutil.copytree(root / "reference", run_dir)
    hand = {**result(run_dir), "status": status, "end_time": "by hand"}
    records.atomic_write_json(run_dir / records.RESULT, hand)
    ckpt_mtime = (run_dir / records.LAST_CKPT).stat().st_mtime_ns
    again = run(cfg, run_dir)
    if records.is_final(status):
        assert again == hand and result(run_dir) == hand  # skipped: nothing written
        assert not (run_dir / records.RUN_LOCK).exists()
        assert (run_dir / records.RUN_LOG).read_text().count("=== ") == 2  # no new segment
    else:
        assert again["status"] == "ok" and again["end_time"] != "by hand"
        assert result(run_dir) == again and again["global_step"] == 12
        segments = records.read_json(run_dir / records.MANIFEST).data["segments"]
        assert len(segments) == 2 and segments[-1]["resumed_from"]["epoch"] == 3
    assert (run_dir / records.LAST_CKPT).stat().st_mtime_ns == ckpt_mtime


def test_retry_trains_a_final_run_again_from_scratch(base, tmp_path):
    cfg, root, reference = base
    run_dir = tmp_path / "run"
    shutil.copytree(root / "reference", run_dir)
    oom = {**result(run_dir), "status": "oom"}
    records.atomic_write_json(run_dir / records.RESULT, oom)
    again = run(OmegaConf.merge(cfg, {"retry": ["oom"]}), run_dir)
    assert again["status"] == "ok" and again["global_step"] == 12
    same_rows(rows(run_dir), rows(root / "reference"))
    assert records.read_json(run_dir / "result.json.retry-1").data == oom  # kept, aside
    assert (run_dir / "last.ckpt.retry-1").exists() and (run_dir / "history.csv.retry-1").exists()
    event = records.read_json(run_dir / records.MANIFEST).data["restarts"][-1]
    assert event["kind"] == "retry" and "oom" in event["reason"]
    assert event["set_aside"]["result.json"] == "result.json.retry-1"


def test_truncated_last_ckpt_is_set_aside_and_the_run_restarts_in_place(base, tmp_path):
    cfg, run_dir, reference, ref_dir = copy_preempted(base, tmp_path)
    preempted = result(run_dir)
    best_before = (run_dir / records.BEST_CKPT).read_bytes()
    data = (run_dir / records.LAST_CKPT).read_bytes()
    (run_dir / records.LAST_CKPT).write_bytes(data[: len(data) // 2])

    again = run(cfg, run_dir)
    assert again["status"] == "ok" and again["failure"] is None
    assert again["global_step"] == 12 and again["epochs_completed"] == 3
    same_rows(rows(run_dir), rows(ref_dir))  # the numbers of a fresh run of this seed
    assert again["metrics"]["best_val_loss"] == reference["metrics"]["best_val_loss"]
    assert again["metrics_best"] == reference["metrics_best"]  # its own best.ckpt
    # nothing lost: the damaged checkpoint, the old best and the old record are kept aside
    assert (run_dir / "last.ckpt.damaged-1").read_bytes() == data[: len(data) // 2]
    assert (run_dir / "best.ckpt.restart-1").read_bytes() == best_before
    assert records.read_json(run_dir / "result.json.restart-1").data == preempted
    manifest = records.read_json(run_dir / records.MANIFEST).data
    (event,) = manifest["restarts"]
    assert event["kind"] == "restart" and "last.ckpt is damaged" in event["reason"]
    assert event["set_aside"]["last.ckpt"] == "last.ckpt.damaged-1"
    assert manifest["segments"][-1]["resumed_from"] is None
    assert "RESTART" in (run_dir / records.RUN_LOG).read_text()


def test_no_space_left_is_infra_disk_and_the_rerun_resumes(base, tmp_path, monkeypatch):
    """ENOSPC on the resumed run's first last.ckpt: `infra`/`disk`, root cause first; the
    earlier last.ckpt stays intact and history.csv does not run ahead of it."""
    cfg, run_dir, reference, ref_dir = copy_preempted(base, tmp_path)
    ckpt_before = (run_dir / records.LAST_CKPT).read_bytes()
    real_replace = os.replace

    def full_disk(src, dst, *a, **k):
        if str(dst).endswith(records.LAST_CKPT) and not str(src).endswith(records.LAST_CKPT):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full_disk)
    res = run(cfg, run_dir)
    monkeypatch.setattr(os, "replace", real_replace)
    assert res["status"] == "infra" and res["failure"]["cause"] == "disk"
    message = res["failure"]["message"]
    assert message.startswith(f"No space left on device while writing {run_dir / 'last.ckpt'}")
    assert "No space left on device" in (run_dir / records.TRACEBACK).read_text()
    assert result(run_dir) == res and not records.is_final(res["status"])
    assert (run_dir / records.LAST_CKPT).read_bytes() == ckpt_before
    assert [r["epoch"] for r in rows(run_dir)] == [0]  # as last.ckpt (epoch 1, batch 2) says
    assert not (run_dir / records.RUN_LOCK).exists()

    again = run(cfg, run_dir)
    assert again["status"] == "ok" and again["global_step"] == 12
    same_rows(rows(run_dir), rows(ref_dir))
    assert again["metrics"]["best_val_loss"] == reference["metrics"]["best_val_loss"]


def test_missing_cuda_is_infra_device_and_keeps_the_checkpoint(base, tmp_path, monkeypatch):
    cfg, run_dir, reference, ref_dir = copy_preempted(base, tmp_path)
    ckpt_before = (run_dir / records.LAST_CKPT).read_bytes()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cuda = OmegaConf.merge(cfg, {"trainer": {"accelerator": "cuda"}})
    res = run(cuda, run_dir)
    assert res["status"] == "infra" and res["failure"]["cause"] == "device"
    assert res["failure"]["message"].startswith("no CUDA device")
    assert (run_dir / records.LAST_CKPT).read_bytes() == ckpt_before
    assert records.read_json(run_dir / records.MANIFEST).ok

    monkeypatch.setattr(job_mod, "resolve_device", lambda accelerator: torch.device("cpu"))
    again = run(cuda, run_dir)  # a non-final ending is retried: here it resumes at step 6
    assert again["status"] == "ok" and again["global_step"] == 12
    same_rows(rows(run_dir), rows(ref_dir))


def test_unreadable_dataset_is_infra_data(make_cfg, tmp_path, monkeypatch):
    def unreadable(cfg):
        raise PermissionError(errno.EACCES, "Permission denied", "/cache/tiny16.npz")

    monkeypatch.setattr(job_mod, "load_data", unreadable)
    res = run(make_cfg(), tmp_path)
    assert res["status"] == "infra" and res["failure"]["cause"] == "data"
    assert res["failure"]["message"].startswith(
        "Permission denied while loading the dataset from /cache/tiny16.npz")


def test_an_error_of_our_code_is_reported_as_a_bug(make_cfg, tmp_path):
    res = run(make_cfg(**{"failure.test_inject_exception_step": 1}), tmp_path)
    assert res["status"] == "exception" and "cause" not in res["failure"]
    assert "a bug in ptychostab" in res["failure"]["message"]
    assert str(tmp_path / records.TRACEBACK) in res["failure"]["message"]


def test_sigint_records_interrupted_releases_the_lock_and_stops_the_sweep(base, tmp_path,
                                                                         monkeypatch):
    cfg, root, reference = base
    run_dir = tmp_path / "run"
    real = stop_at_step(monkeypatch, 6, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # re-raised after recording: the sweep stops
        run(cfg, run_dir)
    res = result(run_dir)
    assert res["status"] == "interrupted" and res["failure"]["step"] == 6
    assert "SIGINT" in res["failure"]["message"]
    ckpt = load_checkpoint(run_dir / records.LAST_CKPT)
    assert ckpt["reason"] == "interrupted" and ckpt["training"]["step_in_epoch"] == 2
    assert not (run_dir / records.RUN_LOCK).exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.setattr(PtychoModule, "training_step", real)
    again = run(cfg, run_dir)
    assert again["status"] == "ok" and again["global_step"] == 12
    same_rows(rows(run_dir), rows(root / "reference"))


def test_a_live_holder_refuses_the_second_run_without_touching_anything(make_cfg, tmp_path):
    holder = RunLock(tmp_path / records.RUN_LOCK, heartbeat_every_s=0)
    holder.acquire()
    try:
        with pytest.raises(RunLocked) as exc:
            run(make_cfg(), tmp_path)
        assert f"pid {os.getpid()} on host" in str(exc.value)
        assert exc.value.holder["token"] == holder.info["token"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [records.RUN_LOCK]
        assert json.loads((tmp_path / records.RUN_LOCK).read_text()) == holder.info
    finally:
        holder.release()
    assert not (tmp_path / records.RUN_LOCK).exists()


# --- the never-demote rule ------------------------------------------------------------------
@pytest.mark.parametrize("current", [None, *records.ALL_STATUSES])
@pytest.mark.parametrize("new", records.ALL_STATUSES)
def test_may_replace_never_demotes(current, new):
    by_run = records.may_replace(current, new, by_run=True)
    outside = records.may_replace(current, new, by_run=False)
    if records.is_final(current):
        assert not by_run and not outside
    elif records.is_final(new):
        assert by_run and not outside
    else:
        assert by_run and outside


def test_recorder_keeps_a_final_record_and_a_resumable_one_from_outside(tmp_path):
    rec = RunRecorder(tmp_path, config={"seed": 0, "sweep": "t"}, arm={}, arm_id="a")
    base = records.result_record(status="preempted", sweep="t", arm_id="a", seed=0,
                                 failure_info=None, metrics={}, metrics_best=None,
                                 grad_norm={}, epochs_completed=1, global_step=4, wall_s=1.0,
                                 params={}, peak_memory_bytes=None)
    assert rec.write_result(base) == base
    oom = {**base, "status": "oom"}
    assert rec.write_result(oom, by_run=False) == base and result(tmp_path) == base
    infra = {**base, "status": "infra"}
    assert rec.write_result(infra, by_run=False) == infra  # non-final over non-final
    ok = {**base, "status": "ok"}
    assert rec.write_result(ok) == ok
    assert rec.write_result({**base, "status": "timeout"}) == ok and result(tmp_path) == ok


# --- fault paths that must stay apart (issue 20) -------------------------------------------
def test_an_io_error_reading_a_good_last_ckpt_is_infra_disk_and_the_rerun_resumes(
        base, tmp_path, monkeypatch, failing_checkpoint_reads):
    """EIO while reading last.ckpt is the disk's fault, not a damaged file: the checkpoint
    is neither set aside nor replaced, nothing restarts, and the rerun resumes from it."""
    cfg, run_dir, reference, ref_dir = copy_preempted(base, tmp_path)
    ckpt_before = (run_dir / records.LAST_CKPT).read_bytes()
    history_before = (run_dir / records.HISTORY).read_bytes()
    res = run(cfg, run_dir)
    assert res["status"] == "infra" and res["failure"]["cause"] == "disk"
    assert res["failure"]["message"].startswith(
        f"Input/output error while reading {run_dir / records.LAST_CKPT}")
    assert (run_dir / records.LAST_CKPT).read_bytes() == ckpt_before
    assert (run_dir / records.HISTORY).read_bytes() == history_before
    assert not [p.name for p in run_dir.iterdir() if ".damaged-" in p.name
                or ".restart-" in p.name]
    assert records.read_json(run_dir / records.MANIFEST).data["restarts"] == []
    assert "RESTART" not in (run_dir / records.RUN_LOG).read_text()

    monkeypatch.undo()  # the disk is back
    again = run(cfg, run_dir)
    assert again["status"] == "ok" and again["global_step"] == 12
    same_rows(rows(run_dir), rows(ref_dir))
    assert again["metrics"]["best_val_loss"] == reference["metrics"]["best_val_loss"]
    segments = records.read_json(run_dir / records.MANIFEST).data["segments"]
    assert segments[-1]["resumed_from"]["global_step"] == 6


def test_an_oserror_of_our_own_code_is_a_final_exception(make_cfg, tmp_path, monkeypatch):
    """A FileNotFoundError raised inside training (not the storage's) is our bug: final
    ``exception``, which a rerun skips; never ``infra`` retried on every rerun."""
    def missing(self, batch, batch_idx):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere/x.npz")

    monkeypatch.setattr(PtychoModule, "training_step", missing)
    res = run(make_cfg(), tmp_path)
    assert res["status"] == "exception" and "cause" not in res["failure"]
    assert res["failure"]["message"].startswith("FileNotFoundError")
    assert "a bug in ptychostab" in res["failure"]["message"]
    assert run(make_cfg(), tmp_path) == res  # final: the rerun skips it


def test_wall_s_accumulates_across_a_resume(base, tmp_path):
    """The resumed segment's clock starts at the checkpoint's wall_s: the history rows it
    writes and the final result count the earlier segment's time (here set to 1000 s)."""
    cfg, run_dir, reference, ref_dir = copy_preempted(base, tmp_path)
    path = run_dir / records.LAST_CKPT
    ckpt = load_checkpoint(path)
    first_segment = ckpt["wall_s"]
    assert 0 < first_segment < 600
    atomic_torch_save({**ckpt, "wall_s": 1000.0}, path)
    res = run(cfg, run_dir)
    assert res["status"] == "ok"
    assert 1000.0 < res["wall_s"] < 1600.0
    walls = [r["wall_s"] for r in records.read_history(run_dir / records.HISTORY).data]
    assert len(walls) == 3
    assert walls[0] <= first_segment  # epoch 0: the first segment's own row, kept
    assert 1000.0 < walls[1] <= walls[2] <= res["wall_s"]
    assert 1000.0 < load_checkpoint(path)["wall_s"] <= res["wall_s"]


def preempt_at(cfg, run_dir, step):
    mp = pytest.MonkeyPatch()
    previous = signal.signal(signal.SIGUSR2, lambda s, f: None)
    try:
        stop_at_step(mp, step, signal.SIGUSR2)
        return run(cfg, run_dir)
    finally:
        mp.undo()
        signal.signal(signal.SIGUSR2, previous)


def test_a_preemption_inside_epoch_0_keeps_the_initialisation_rows(base, tmp_path):
    """Preempted at step 2 (epoch 0, batch 2): the resumed run must not measure its partly
    trained weights as epoch -1; every row equals the uninterrupted run's."""
    cfg, root, reference = base
    run_dir = tmp_path / "run"
    assert preempt_at(cfg, run_dir, 2)["status"] == "preempted"
    ckpt = load_checkpoint(run_dir / records.LAST_CKPT)["training"]
    assert ckpt["epoch"] == 0 and ckpt["step_in_epoch"] == 2
    want = read_activations(root / "reference" / ACTIVATIONS)
    init = [r for r in want if r["epoch"] == -1]
    assert init and read_activations(run_dir / ACTIVATIONS) == init
    assert run(cfg, run_dir)["status"] == "ok"
    assert read_activations(run_dir / ACTIVATIONS) == want


def test_lost_rows_of_a_due_epoch_are_measured_again_on_resume(make_cfg, tmp_path):
    """every_n_epochs=2: killed after epoch 1's last.ckpt landed, before its rows did; the
    rerun (nothing left to train) measures them again from the restored weights."""
    cfg = make_cfg(**{"diagnostics.every_n_epochs": 2, "trainer.max_epochs": 2})
    first = run(cfg, tmp_path)
    assert first["status"] == "ok"
    want = read_activations(tmp_path / ACTIVATIONS)
    assert sorted({r["epoch"] for r in want}) == [-1, 1]
    write_activations(tmp_path / ACTIVATIONS, [r for r in want if r["epoch"] != 1])
    (tmp_path / records.RESULT).unlink()
    again = run(cfg, tmp_path)
    assert again["status"] == "ok" and again["global_step"] == first["global_step"]
    assert read_activations(tmp_path / ACTIVATIONS) == want


def test_an_error_of_our_code_while_saving_at_a_preemption_is_recorded(make_cfg, tmp_path,
                                                                        monkeypatch):
    """SIGUSR2 at step 2, and the save of last.ckpt raises a PermissionError (not the
    storage's): the run ends ``exception`` with its record; run_job does not raise."""
    from ptychostab.runs import recorder as recorder_mod

    def denied(obj, path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(recorder_mod, "atomic_torch_save", denied)
    res = preempt_at(make_cfg(), tmp_path, 2)
    assert res["status"] == "exception" and res["failure"]["message"].startswith(
        "PermissionError")
    assert result(tmp_path) == res and not (tmp_path / records.RUN_LOCK).exists()


def test_missing_initialisation_rows_stay_missing_after_a_preemption_inside_epoch_0(
        base, tmp_path):
    """Preempted at step 2 without epoch -1 rows (the probe was off in the first segment):
    the resumed run cannot measure the initial weights any more, so it writes none; it
    never labels its partly trained weights epoch -1."""
    cfg, root, reference = base
    run_dir = tmp_path / "run"
    assert preempt_at(cfg, run_dir, 2)["status"] == "preempted"
    (run_dir / ACTIVATIONS).unlink()
    assert run(cfg, run_dir)["status"] == "ok"
    want = [r for r in read_activations(root / "reference" / ACTIVATIONS) if r["epoch"] >= 0]
    assert read_activations(run_dir / ACTIVATIONS) == want
