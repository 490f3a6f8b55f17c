"""Fault paths without training (issue 20): which error is the infrastructure's and which is
ours, a damaged checkpoint against a failing disk, and the clock a resumed run starts from.

Each test builds its situation by hand (a checkpoint file, an injected ``OSError``) and runs in
milliseconds; ``test_faults.py`` has the same paths end to end through ``run_job``.
"""

import errno
import os

import pytest
import torch

from ptychostab.runs import checkpoint as ckpt_mod
from ptychostab.runs import records
from ptychostab.runs.checkpoint import (
    FORMAT,
    DamagedCheckpoint,
    atomic_torch_save,
    load_checkpoint,
)
from ptychostab.runs.faults import DISK_ERRNOS, InfraFault, classify
from ptychostab.runs.recorder import RunRecorder

CONFIG = {"seed": 0, "sweep": "t"}


# --- classify: both directions -------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(DISK_ERRNOS))
def test_storage_errors_are_infra_disk(code):
    assert {errno.ENOSPC, errno.EIO, errno.EROFS} <= DISK_ERRNOS
    err = OSError(code, os.strerror(code), "/runs/x/last.ckpt")
    status, cause, message = classify(err, "/runs/x/traceback.txt")
    assert (status, cause) == ("infra", "disk")
    assert message.startswith(os.strerror(code)) and "/runs/x/last.ckpt" in message


@pytest.mark.parametrize("err", [
    FileNotFoundError(errno.ENOENT, "No such file or directory", "/src/missing.npz"),
    PermissionError(errno.EACCES, "Permission denied", "/etc/shadow"),
    IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"),
    NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/y"),
    FileExistsError(errno.EEXIST, "File exists", "/x"),
    OSError(errno.EINVAL, "Invalid argument"),
    OSError("an OSError without errno"),
    ValueError("plain bug"),
], ids=lambda e: type(e).__name__ + str(getattr(e, "errno", "")))
def test_other_errors_of_our_code_are_exception_not_infra(err):
    """A FileNotFoundError or PermissionError raised by our own code is a bug: final
    ``exception`` (a rerun does not retry it forever as infra)."""
    status, cause, message = classify(err, "/runs/x/traceback.txt")
    assert (status, cause) == ("exception", None)
    assert type(err).__name__ in message and message.endswith(
        "a bug in ptychostab (traceback: /runs/x/traceback.txt)")
    assert not records.is_final("infra") and records.is_final(status)


def test_an_infra_fault_keeps_its_own_cause():
    assert classify(InfraFault("data", "gone"), "tb")[:2] == ("infra", "data")
    wrapped = InfraFault("disk", "x")
    wrapped.__cause__ = FileNotFoundError(errno.ENOENT, "no")
    assert classify(wrapped, "tb")[:2] == ("infra", "disk")


# --- load_checkpoint: damaged content against a failing disk -------------------------------
def good_checkpoint(path, wall_s=1.0, **extra):
    state = {"format": FORMAT, "reason": "epoch_end", "training": {"w": torch.randn(2000)},
             "rng": {}, "wall_s": wall_s, "config_hash": None, **extra}
    atomic_torch_save(state, path)
    return path.read_bytes()


def damage(data: bytes, how: str) -> bytes:
    return {"empty": b"", "half": data[: len(data) // 2], "tail": data[:-10],
            "zeros": bytes(len(data)), "garbage": b"\x80\x02garbage" * 100,
            "first_byte": b"x" + data[1:]}[how]


@pytest.mark.parametrize("how", ["empty", "half", "tail", "zeros", "garbage", "first_byte"])
def test_damaged_content_is_damaged_checkpoint(tmp_path, how):
    """Every kind of damage, the truncated tail included (torch's own reader raises an
    OSError EINVAL for it: a content fault, never the disk's)."""
    path = tmp_path / "last.ckpt"
    path.write_bytes(damage(good_checkpoint(path), how))
    with pytest.raises(DamagedCheckpoint):
        load_checkpoint(path)


def test_another_format_is_damaged_checkpoint(tmp_path):
    torch.save({"not": "ours"}, tmp_path / "last.ckpt")
    with pytest.raises(DamagedCheckpoint, match="not a ptychostab.ckpt/1"):
        load_checkpoint(tmp_path / "last.ckpt")


@pytest.mark.parametrize("code", [errno.EIO, getattr(errno, "ESTALE", errno.EIO)])
def test_a_read_error_inside_torch_load_is_the_oserror_not_damage(tmp_path, code,
                                                                  failing_checkpoint_reads):
    failing_checkpoint_reads.code = code
    path = tmp_path / "last.ckpt"
    good_checkpoint(path)
    with pytest.raises(OSError) as exc:
        load_checkpoint(path)
    assert exc.value.errno == code and not isinstance(exc.value, DamagedCheckpoint)


def test_an_unopenable_checkpoint_is_the_oserror(tmp_path, monkeypatch):
    def denied(path, mode="rb"):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(ckpt_mod, "open", denied, raising=False)
    good_checkpoint(tmp_path / "last.ckpt")
    with pytest.raises(PermissionError):
        load_checkpoint(tmp_path / "last.ckpt")


# --- the recorder: restart on damage only; infra/disk keeps the file ------------------------
def recorder(run_dir, **kw):
    return RunRecorder(run_dir, config=CONFIG, arm={}, arm_id="a", heartbeat_every_s=0, **kw)


def test_a_damaged_last_ckpt_is_set_aside_and_the_run_restarts(tmp_path):
    path = tmp_path / records.LAST_CKPT
    bad = damage(good_checkpoint(path, wall_s=500.0), "tail")
    path.write_bytes(bad)
    rec = recorder(tmp_path)
    try:
        rec.start()
        assert rec.checkpoint is None and rec.clock() < 60  # from scratch, from 0 s
    finally:
        rec.end()
    assert not path.exists() and (tmp_path / "last.ckpt.damaged-1").read_bytes() == bad
    (event,) = records.read_json(tmp_path / records.MANIFEST).data["restarts"]
    assert event["kind"] == "restart" and "last.ckpt is damaged" in event["reason"]


@pytest.mark.parametrize("fault", ["eio_inside_torch", "eacces_open", "estale_open"])
def test_a_read_error_of_a_good_last_ckpt_is_infra_disk_and_keeps_it(tmp_path, monkeypatch,
                                                                     fault, request):
    """EIO (or any OSError) reading last.ckpt: infra/disk; the good checkpoint is not set
    aside, no restart is recorded, and the next start resumes from it."""
    path = tmp_path / records.LAST_CKPT
    data = good_checkpoint(path, wall_s=500.0)
    if fault == "eio_inside_torch":
        request.getfixturevalue("failing_checkpoint_reads")
    else:
        code = errno.EACCES if fault == "eacces_open" else getattr(errno, "ESTALE", errno.EIO)

        def failing(p, mode="rb"):
            raise OSError(code, os.strerror(code), str(p))

        monkeypatch.setattr(ckpt_mod, "open", failing, raising=False)
    rec = recorder(tmp_path)
    try:
        with pytest.raises(InfraFault) as exc:
            rec.start()
    finally:
        rec.end()
    assert exc.value.cause == "disk" and "while reading" in str(exc.value)
    assert str(path) in str(exc.value)
    assert classify(exc.value, "tb")[:2] == ("infra", "disk")
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [records.LAST_CKPT, records.RUN_LOG]
    assert rec.restarts == []

    monkeypatch.undo()  # the disk is back: the same file resumes
    again = recorder(tmp_path)
    try:
        again.start()
        assert again.checkpoint["wall_s"] == 500.0 and again.restarts == []
    finally:
        again.end()


def test_out_of_memory_while_loading_is_not_damage(tmp_path, monkeypatch):
    path = tmp_path / records.LAST_CKPT
    data = good_checkpoint(path)

    def oom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(ckpt_mod.torch, "load", oom)
    rec = recorder(tmp_path)
    try:
        with pytest.raises(MemoryError):
            rec.start()
    finally:
        rec.end()
    assert path.read_bytes() == data and not (tmp_path / "last.ckpt.damaged-1").exists()


@pytest.mark.parametrize("code, infra", [
    (errno.ENOSPC, True), (errno.EIO, True), (errno.EROFS, True),
    (errno.ENOENT, False), (errno.EACCES, False), (errno.EINVAL, False)])
def test_a_write_error_is_infra_only_when_it_is_the_storages(tmp_path, monkeypatch, code,
                                                             infra):
    """Writing a record: ENOSPC/EIO/EROFS are the disk's (InfraFault, root cause first);
    a FileNotFoundError or PermissionError is raised as it is (our bug: ``exception``)."""
    err = OSError(code, os.strerror(code))

    def failing(*a, **k):
        raise err

    monkeypatch.setattr(records, "write_history", failing)
    rec = recorder(tmp_path)
    with pytest.raises(OSError if not infra else InfraFault) as exc:
        rec.write_history([])
    if infra:
        assert exc.value.cause == "disk"
        assert str(exc.value).startswith(f"{os.strerror(code)} while writing {tmp_path}")
    else:
        assert exc.value is err and classify(err, "tb")[0] == "exception"
    # the same through the background writer (checkpoints, history, sinks' files)
    rec.submit(records.HISTORY, failing)
    with pytest.raises(OSError if not infra else InfraFault):
        rec.drain()
    rec.end()


# --- the clock of a resumed run ------------------------------------------------------------
def test_the_clock_continues_from_the_checkpoints_wall_s(tmp_path):
    good_checkpoint(tmp_path / records.LAST_CKPT, wall_s=1000.0)
    rec = recorder(tmp_path)
    try:
        assert rec.clock() < 60
        rec.start()
        assert 1000.0 <= rec.clock() < 1060.0
        state = rec._last_state(type("M", (), {"training_state": lambda self: {}})(), "x")
        assert 1000.0 <= state["wall_s"] < 1060.0  # the next checkpoint carries it on
    finally:
        rec.end()


def test_a_retry_restarts_the_clock_from_zero(tmp_path):
    good_checkpoint(tmp_path / records.LAST_CKPT, wall_s=1000.0)
    records.atomic_write_json(tmp_path / records.RESULT,
                              {"status": "oom", "schema_version": records.SCHEMA_VERSION})
    rec = recorder(tmp_path)
    try:
        rec.start(retry=("oom",))
        assert rec.checkpoint is None and rec.clock() < 60
        assert (tmp_path / "last.ckpt.retry-1").exists()
    finally:
        rec.end()
