"""``run.lock``: who holds a run folder, when a lock is stale, and that only its owner
removes it (no training here: :mod:`ptychostab.runs.lock` alone)."""

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ptychostab.runs import lock as lockmod
from ptychostab.runs.lock import (
    RunLock,
    RunLocked,
    process_start,
    read_lock,
    stale_reason,
)


def ago(seconds):
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat()

def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid

def holder(**kw):
    return {"pid": 1, "host": "elsewhere", "slurm_job_id": None, "pack_id": None,
            "start_time": ago(10), "heartbeat_time": ago(10), "token": "t", **kw}

@pytest.mark.parametrize("info, stale", [
    (holder(), False),  # another host, fresh heartbeat: may be alive
    (holder(heartbeat_time=ago(3600)), True),
    (holder(host=socket.gethostname(), pid="dead"), True),
    ({}, True),
    (holder(heartbeat_time="yesterday"), True),
])
def test_stale_reason(info, stale):
    if info.get("pid") == "dead":
        info["pid"] = dead_pid()
    reason = stale_reason(info, stale_after_s=900)
    assert (reason is not None) == stale, reason

def test_an_earlier_incarnation_of_the_same_slurm_job_is_stale(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert "requeued" in stale_reason(holder(slurm_job_id="777"))
    assert stale_reason(holder(slurm_job_id="778")) is None

def test_live_holder_refuses_then_releases(tmp_path):
    path = tmp_path / "run.lock"
    first = RunLock(path, heartbeat_every_s=0)
    assert first.acquire() is None
    info = read_lock(path)
    assert set(info) == {"pid", "host", "slurm_job_id", "pack_id", "pid_start", "start_time",
                         "heartbeat_time", "token"}
    assert info["pid_start"] == process_start(os.getpid()) is not None
    with pytest.raises(RunLocked) as exc:
        RunLock(path, heartbeat_every_s=0).acquire()
    assert exc.value.holder == info and "not a SLURM job" in str(exc.value)
    first.release()
    assert not path.exists()

def test_stale_lock_is_taken_over_and_the_old_owner_does_not_remove_it(tmp_path):
    path = tmp_path / "run.lock"
    old = RunLock(path, heartbeat_every_s=0)
    old.acquire()
    info = dict(old.info, pid=dead_pid())
    path.write_text(json.dumps(info))  # as if its process had died
    new = RunLock(path, heartbeat_every_s=0)
    taken = new.acquire()
    assert taken is not None and f"pid {info['pid']}" in taken
    assert read_lock(path)["token"] == new.info["token"]
    old.heartbeat()  # notices it lost the lock, writes nothing
    old.release()
    assert read_lock(path)["token"] == new.info["token"]
    new.release()
    assert not path.exists() and list(tmp_path.iterdir()) == []

def test_heartbeat_thread_refreshes_the_lock(tmp_path):
    path = tmp_path / "run.lock"
    lock = RunLock(path, heartbeat_every_s=0.05)
    lock.acquire()
    first = read_lock(path)["heartbeat_time"]
    lock.info["heartbeat_time"] = ago(3600)
    path.write_text(json.dumps(lock.info))

    deadline = time.monotonic() + 5
    while read_lock(path)["heartbeat_time"] < first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read_lock(path)["heartbeat_time"] >= first
    lock.release()
    assert not path.exists()


# --- token, host, pid reuse (issue 20) ---------------------------------------------------------
def test_a_stalled_old_owner_releasing_leaves_the_new_holders_lock(tmp_path):
    """The old owner stalled past its lease (no heartbeat since), was taken over, and wakes
    up straight into release(): the new holder's lock stays, byte for byte."""
    path = tmp_path / "run.lock"
    old = RunLock(path, heartbeat_every_s=0, stale_after_s=60)
    old.acquire()
    stalled = dict(old.info, heartbeat_time=ago(3600))
    path.write_text(json.dumps(stalled))  # its last heartbeat, an hour ago
    new = RunLock(path, heartbeat_every_s=0, stale_after_s=60)
    assert "last heartbeat" in new.acquire()
    before = path.read_bytes()
    assert old.held  # it does not know yet
    old.release()
    assert path.read_bytes() == before and read_lock(path)["token"] == new.info["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]
    new.release()
    assert not path.exists()


def test_an_old_owner_does_not_overwrite_the_new_holders_lock_by_a_heartbeat(tmp_path):
    path = tmp_path / "run.lock"
    old = RunLock(path, heartbeat_every_s=0)
    old.acquire()
    path.write_text(json.dumps(dict(old.info, token="someone-else")))
    before = path.read_bytes()
    old.heartbeat()
    assert path.read_bytes() == before and not old.held


def test_release_removes_only_a_lock_with_its_token_and_never_raises(tmp_path, monkeypatch):
    path = tmp_path / "run.lock"
    lock = RunLock(path, heartbeat_every_s=0)
    lock.acquire()
    path.write_text("{half a lock")  # unreadable: not provably ours, left alone
    lock.release()
    assert path.read_text() == "{half a lock"
    path.unlink()
    lock = RunLock(path, heartbeat_every_s=0)
    lock.acquire()

    def eio(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(lockmod.os, "replace", eio)
    lock.release()  # logged, not raised: the end of a run never fails on its lock
    assert not lock.held


@pytest.mark.parametrize("slurm", [None, "4242_1"])
def test_another_hosts_lock_is_never_judged_by_a_local_pid(monkeypatch, slurm):
    """pid dead here, reused here by another process, or garbage: none of it says anything
    about a process on another host; only the lease (heartbeat age) does."""
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for pid in (dead_pid(), os.getpid(), 1):
        other = holder(host="node-elsewhere", pid=pid, slurm_job_id=slurm,
                       pid_start="linux:another-boot:1")
        assert stale_reason(other, stale_after_s=900) is None
        assert "last heartbeat" in stale_reason(dict(other, heartbeat_time=ago(3600)),
                                                stale_after_s=900)


def test_a_live_remote_holder_refuses_the_lock(tmp_path):
    path = tmp_path / "run.lock"
    remote = holder(host="node-elsewhere", pid=dead_pid(), heartbeat_time=ago(5))
    path.write_text(json.dumps(remote))
    with pytest.raises(RunLocked) as exc:
        RunLock(path, heartbeat_every_s=0).acquire()
    assert "node-elsewhere" in str(exc.value) and json.loads(path.read_text()) == remote


def test_a_reused_pid_is_not_the_dead_holder():
    """The holder died and its pid now belongs to another live process of this host (here:
    this test's own process): its start time differs, so the lock is stale."""
    here = socket.gethostname()
    mine = process_start(os.getpid())
    assert mine is not None and mine.startswith("linux:" if sys.platform == "linux" else "ps:")
    method = mine.split(":", 1)[0]
    reused = holder(host=here, pid=os.getpid(), pid_start=f"{method}:earlier-process",
                    heartbeat_time=ago(5))
    assert "reused" in stale_reason(reused, stale_after_s=900)
    assert stale_reason(dict(reused, pid_start=mine), stale_after_s=900) is None
    # a lock file from before the field (or null: unknown) is judged by the pid alone
    for old in ({k: v for k, v in reused.items() if k != "pid_start"},
                dict(reused, pid_start=None)):
        assert stale_reason(old, stale_after_s=900) is None
    assert stale_reason(dict(reused, pid=dead_pid(), pid_start=None), stale_after_s=900)
    # a start read another way (an other method) is not compared
    assert stale_reason(dict(reused, pid_start="other:x"), stale_after_s=900) is None


def test_a_reused_pid_lock_is_taken_over(tmp_path):
    path = tmp_path / "run.lock"
    path.write_text(json.dumps(holder(host=socket.gethostname(), pid=os.getpid(),
                                      pid_start="linux:x:1" if sys.platform == "linux"
                                      else "ps:x", heartbeat_time=ago(5))))
    new = RunLock(path, heartbeat_every_s=0)
    assert "reused" in new.acquire()
    assert read_lock(path)["token"] == new.info["token"]
    new.release()


def test_process_start_tells_processes_apart():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start(proc.pid)
        assert start is not None and start != process_start(os.getpid())
        assert process_start(proc.pid) == start  # stable for one process
    finally:
        proc.kill()
        proc.wait()
    assert process_start(proc.pid) is None
    assert process_start(0) is None and process_start(-1) is None and process_start("x") is None


@pytest.mark.parametrize("pid", [0, -1, "garbage", None])
def test_a_lock_with_a_nonsense_pid_on_this_host_is_stale(pid):
    info = holder(host=socket.gethostname(), pid=pid, heartbeat_time=ago(5))
    assert "not running" in stale_reason(info, stale_after_s=900)


def test_a_takeover_between_the_check_and_the_removal_survives_release(tmp_path, monkeypatch):
    """The lock is taken over right after release() read it as its own: the removal must
    still leave the new holder's lock in place."""
    path = tmp_path / "run.lock"
    old = RunLock(path, heartbeat_every_s=0)
    old.acquire()
    newer = dict(old.info, token="new-holder", pid=12345)
    real_replace = os.replace

    def takeover_first(src, dst):
        if str(src) == str(path):
            path.write_text(json.dumps(newer))  # the takeover lands just before the move
        return real_replace(src, dst)

    monkeypatch.setattr(lockmod.os, "replace", takeover_first)
    old.release()
    assert json.loads(path.read_text()) == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]
