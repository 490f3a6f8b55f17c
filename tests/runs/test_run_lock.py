"""``run.lock``: who holds a run folder, when a lock is stale, and that only its owner
removes it (no training here: :mod:`ptychostab.runs.lock` alone)."""

import datetime as dt
import json
import socket
import subprocess
import sys
import time

import pytest

from ptychostab.runs.lock import RunLock, RunLocked, read_lock, stale_reason


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
    assert set(info) == {"pid", "host", "slurm_job_id", "pack_id", "start_time",
                         "heartbeat_time", "token"}
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
