"""One sweep per sweep folder at a time: an ``fcntl.flock`` on ``<sweep_dir>/.sweep.lock``.

The launcher process (``python train.py -m ...``) takes the lock exclusively in the preflight
and holds it until it exits. The kernel drops a flock when its holder dies, however it dies,
so a crashed or killed launcher never leaves a stale lock behind; the file's content (pid,
host, start time, command) only serves the refusal message. Single runs (no ``-m``) take it
shared: they may run side by side, but not next to a sweep of the same folder.

On NFS, Linux implements flock with fcntl byte-range locks, which NFS (v3 with lockd, v4)
propagates between hosts. Jobs that SLURM is still running after their launcher was killed
are not covered: wait for them (``squeue``) before starting the sweep again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ptychostab.analysis.sweepdir import SWEEP_LOCK as LOCK_NAME


class SweepLocked(RuntimeError):
    """Another process holds the sweep folder."""


class SweepLock:
    def __init__(self, sweep_dir: str | os.PathLike):
        self.sweep_dir = Path(sweep_dir).absolute()
        self.path = self.sweep_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, shared: bool = False) -> "SweepLock":
        """Take the lock now or raise :class:`SweepLocked` naming the holder (never waits)."""
        if self._fd is not None:
            return self
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise SweepLocked(self._refusal(shared)) from None
        self._fd = fd
        if not shared:  # a shared holder must not overwrite the sweep's note
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refusal(self, shared: bool) -> str:
        h = self.holder()
        who = (f"pid {h.get('pid')} on {h.get('host')} since {h.get('start')}: "
               f"{h.get('command')}" if h else "another process")
        what = "a sweep" if shared else "another sweep or run"
        return (f"sweep folder {self.sweep_dir} is in use by {what} ({who}). Two sweeps "
                f"writing one folder would clobber each other's runs. Wait for it to finish "
                f"(or stop it), or give this one another name: sweep=<name>.")

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}
