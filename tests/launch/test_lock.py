"""One sweep per sweep folder: the flock and the refusals it causes."""

from __future__ import annotations

import subprocess

import pytest
from _fixtures import FAST, PY, run_dirs, train, wait_for

from ptychostab.launch.sweep_lock import LOCK_NAME, SweepLock, SweepLocked


def test_second_exclusive_holder_is_refused_with_the_holders_name(tmp_path):
    with SweepLock(tmp_path / "s"):
        with pytest.raises(SweepLocked) as info:
            SweepLock(tmp_path / "s").acquire()
        assert "in use" in str(info.value) and "pid" in str(info.value)
    SweepLock(tmp_path / "s").acquire().release()  # free again


def test_shared_and_exclusive(tmp_path):
    a = SweepLock(tmp_path).acquire(shared=True)
    b = SweepLock(tmp_path).acquire(shared=True)  # single runs coexist
    with pytest.raises(SweepLocked):
        SweepLock(tmp_path).acquire()  # ... but block a sweep
    a.release(), b.release()
    with SweepLock(tmp_path):
        with pytest.raises(SweepLocked):
            SweepLock(tmp_path).acquire(shared=True)  # and a sweep blocks single runs


def test_lock_dies_with_its_process(tmp_path):
    code = ("from ptychostab.launch.sweep_lock import SweepLock; "
            f"SweepLock({str(tmp_path)!r}).acquire();"
            "print('held', flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(SweepLocked):
            SweepLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.communicate()
    assert wait_for(lambda: _free(tmp_path), 5)  # no stale lock after a kill -9


def _free(path) -> bool:
    try:
        SweepLock(path).acquire().release()
        return True
    except SweepLocked:
        return False


@pytest.mark.slow  # 13 s; the lock itself is tested in-process above
def test_train_refuses_a_sweep_folder_in_use(tmp_path):
    """The CLI path: a held lock makes `train.py -m` exit non-zero before any job."""
    with SweepLock(tmp_path / "default"):
        res = train(["-m", "seed=range(2)", *FAST], tmp_path)
        assert res.returncode != 0, res.stdout
        assert "in use" in res.stdout and "Nothing was launched" in res.stdout
        assert run_dirs(tmp_path / "default") == []
        single = train(FAST, tmp_path)  # a single run into the same sweep folder
        assert single.returncode != 0 and "in use" in single.stdout
        assert run_dirs(tmp_path / "default") == []


@pytest.mark.slow
def test_two_concurrent_sweeps_on_one_folder(tmp_path):
    # the first sweep's jobs train long enough for the second to start meanwhile
    first = train(["-m", "seed=range(2)", *FAST, "trainer.max_epochs=200"], tmp_path, wait=False)
    try:
        assert wait_for(lambda: (tmp_path / "default" / "plan.csv").exists(), 120)
        second = train(["-m", "seed=range(2)", *FAST], tmp_path)
        assert first.poll() is None, "the first sweep ended too early for this test"
        assert second.returncode != 0 and "in use" in second.stdout
        assert "Nothing was launched" in second.stdout
    finally:
        first.terminate()  # SIGTERM: the running job records itself as preempted
        first.communicate(timeout=120)
    assert (tmp_path / "default" / LOCK_NAME).exists()
    assert _free(tmp_path / "default")  # released with the first sweep's process
