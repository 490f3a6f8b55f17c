"""``run.lock``: the per-run lock and liveness file (docs/contracts.md, Run records).

While a run is alive its folder holds ``run.lock``, a JSON object::

    {"pid": 4242, "host": "node17", "slurm_job_id": "123_4", "pack_id": null,
     "pid_start": "linux:5b0c...:123456", "start_time": "2025-...+00:00",
     "heartbeat_time": "2025-...+00:00", "token": "9f3c..."}

``pid_start`` (:func:`process_start`) says which process ``pid`` was: an opaque string,
``linux:<boot id>:<start time in clock ticks>`` (``/proc/<pid>/stat`` field 22) on Linux,
``ps:<ps -o lstart>`` elsewhere, null when unknown; only compared for equality, on the
holder's host, by the same method. A lock file without it (written before it existed) is read
as before: the pid alone says whether the holder lives.

- created with ``O_CREAT | O_EXCL`` (exactly one holder), removed when the run ends;
- ``heartbeat_time`` is rewritten (atomically) at every epoch end and every
  ``heartbeat_every_s`` seconds by a daemon thread, so it stays fresh through long epochs and
  long setups; the status view calls a run *running* while it is fresh;
- a second process for the same folder is refused with :class:`RunLocked`, which names the
  holder; unless the lock is stale (:func:`stale_reason`): its pid is dead on this host (or
  alive but another process, started at another time than ``pid_start``: the pid was reused),
  it was written by an earlier incarnation of this same SLURM job (a requeue), its heartbeat is
  older than ``stale_after_s``, or it is unreadable. A lock of another host is never judged by
  a pid of this one: only its heartbeat (the lease) or a requeue make it stale. A stale lock is
  taken over (logged);
- only its owner removes it: :meth:`RunLock.release` and :meth:`RunLock.heartbeat` check the
  ``token``, so an owner that stalled past its lease and was taken over never deletes or
  overwrites the new holder's lock.

Pure Python (no torch): the status view and the sweep import it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import subprocess
import threading
import uuid
from pathlib import Path

from ptychostab.atomic import atomic_write_json

__all__ = ["LOCK", "RunLock", "RunLocked", "describe_holder", "process_start", "read_lock",
           "stale_reason"]

log = logging.getLogger(__name__)

LOCK = "run.lock"
STALE_AFTER_S = 900.0
HEARTBEAT_EVERY_S = 60.0


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _slurm_job_id() -> str | None:
    """``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID`` (None outside SLURM)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def describe_holder(info: dict) -> str:
    """``pid 4242 on host node17 (SLURM job 123_4)``: the holder as a message names it."""
    slurm = info.get("slurm_job_id")
    text = f"pid {info.get('pid')} on host {info.get('host')}"
    text += f" (SLURM job {slurm})" if slurm else " (not a SLURM job)"
    if info.get("pack_id"):
        text += f", pack {info['pack_id']}"
    return text


class RunLocked(RuntimeError):
    """Another live process holds this run folder. Nothing of the folder was touched.

    Attributes
    ----------
    path : Path
        The ``run.lock`` file.
    holder : dict
        Its content (pid, host, slurm_job_id, pack_id, start_time, heartbeat_time).
    """

    def __init__(self, path: Path, holder: dict):
        self.path, self.holder = Path(path), dict(holder)
        super().__init__(
            f"{self.path.parent} is in use by {describe_holder(holder)}, started "
            f"{holder.get('start_time')}, last heartbeat {holder.get('heartbeat_time')}; "
            f"refusing to run the same job twice at once. If that process is gone, delete "
            f"{self.path}")


def read_lock(path: str | os.PathLike) -> dict | None:
    """The lock's content; None when there is none; ``{}`` when it is unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid(value) -> int | None:
    """A lock's ``pid`` as a positive int; None for anything else (0 and negative pids name
    process groups for ``os.kill``, never one process)."""
    try:
        pid = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return pid if pid > 0 else None


def _pid_alive(pid) -> bool:
    pid = _pid(pid)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except (OverflowError, OSError):
        return False
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def process_start(pid) -> str | None:
    """When process ``pid`` of this host started, as an opaque string (None: unknown, or no
    such process): tells a live holder from another process that got its pid later.

    Linux: ``linux:<boot id>:<ticks>`` from ``/proc/<pid>/stat`` (field 22, start time in
    clock ticks after boot; the boot id makes it unique across reboots; None without a
    readable boot id). Elsewhere (no ``/proc``): ``ps:<lstart>`` from
    ``ps -o lstart= -p <pid>`` (to the second).
    """
    pid = _pid(pid)
    if pid is None:
        return None
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the fields
            # after its closing one start at field 3, so field 22 is the 20th of them
            ticks = stat[stat.rindex(")") + 1:].split()[19]
        except (OSError, ValueError, IndexError):
            return None
        boot = _boot_id()
        return f"linux:{boot}:{ticks}" if boot else None
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lstart = " ".join(out.stdout.split())
    return f"ps:{lstart}" if out.returncode == 0 and lstart else None


def _same_method(a: str, b: str) -> bool:
    return a.split(":", 1)[0] == b.split(":", 1)[0]


def stale_reason(info: dict, *, stale_after_s: float = STALE_AFTER_S,
                 now: _dt.datetime | None = None) -> str | None:
    """Why the lock ``info`` no longer protects a live run, or None when its holder may live."""
    if not info or "pid" not in info:
        return "unreadable lock file"
    here = socket.gethostname()
    if info.get("host") == here:  # a pid means something on its own host only
        if not _pid_alive(info["pid"]):
            return f"pid {info['pid']} is not running on {here}"
        recorded = info.get("pid_start")
        if isinstance(recorded, str) and recorded:
            current = process_start(info["pid"])
            if current is not None and _same_method(current, recorded) and current != recorded:
                return (f"pid {info['pid']} on {here} is another process now (started "
                        f"{current}, the holder {recorded}): the pid was reused")
    ours = _slurm_job_id()
    if ours and info.get("slurm_job_id") == ours and (
            info.get("host") != here or _pid(info.get("pid")) != os.getpid()):
        return f"written by an earlier incarnation of SLURM job {ours} (requeued)"
    try:
        beat = _dt.datetime.fromisoformat(str(info.get("heartbeat_time")))
    except ValueError:
        return "no readable heartbeat_time"
    age = ((now or _now()) - beat).total_seconds()
    if age > stale_after_s:
        return f"last heartbeat {age:.0f} s ago (> {stale_after_s:g} s)"
    return None


_OWN_START: dict[int, str | None] = {}


def _own_start() -> str | None:
    """:func:`process_start` of this process (once per pid: a fork gets its own)."""
    pid = os.getpid()
    if pid not in _OWN_START:
        _OWN_START[pid] = process_start(pid)
    return _OWN_START[pid]


class RunLock:
    """The lock of one run folder: :meth:`acquire`, :meth:`heartbeat`, :meth:`release`.

    Parameters
    ----------
    path : path
        ``<run_dir>/run.lock``.
    pack_id : str, optional
        The pack this run belongs to (packing); None for a run alone in its process.
    stale_after_s, heartbeat_every_s : float
        A heartbeat older than ``stale_after_s`` marks the lock stale; the daemon thread
        beats every ``heartbeat_every_s`` (0: only at start and epoch ends).
    """

    def __init__(self, path: str | os.PathLike, *, pack_id: str | None = None,
                 stale_after_s: float = STALE_AFTER_S,
                 heartbeat_every_s: float = HEARTBEAT_EVERY_S):
        self.path = Path(path)
        self.stale_after_s, self.heartbeat_every_s = stale_after_s, heartbeat_every_s
        start = _now().isoformat(timespec="seconds")
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "slurm_job_id": _slurm_job_id(), "pack_id": pack_id,
                     "pid_start": _own_start(), "start_time": start, "heartbeat_time": start,
                     "token": uuid.uuid4().hex}
        self.held = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- acquire / release ---------------------------------------------------------------------
    def acquire(self) -> str | None:
        """Create the lock, taking over a stale one. Returns the stale holder's description
        when one was taken over. Raises :class:`RunLocked` when a live holder has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        taken_over = None
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                current = read_lock(self.path)
                if current is None:
                    continue  # released meanwhile
                reason = stale_reason(current, stale_after_s=self.stale_after_s)
                if reason is None:
                    raise RunLocked(self.path, current) from None
                if self._set_aside(current):
                    taken_over = f"{describe_holder(current)}: {reason}"
                    log.warning("taking over the stale lock %s of %s", self.path, taken_over)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.info, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            self._start_thread()
            return taken_over
        raise RunLocked(self.path, read_lock(self.path) or {})

    def _set_aside(self, judged: dict) -> bool:
        """Move the stale lock ``judged`` out of the way; False if another process replaced it
        meanwhile (then it is put back, and the caller looks again)."""
        moved = self.path.with_name(f"{self.path.name}.stale-{self.info['token']}")
        try:
            os.replace(self.path, moved)
        except FileNotFoundError:
            return False
        try:
            if (read_lock(moved) or {}).get("token") != judged.get("token"):
                try:
                    os.link(moved, self.path)  # a fresh lock of someone else: put it back
                except FileExistsError:
                    pass
                return False
            return True
        finally:
            moved.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (its ``token``): an
        owner that was taken over leaves the new holder's lock alone. Never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._mutex:
            try:
                if self.held:
                    self._remove_if_ours()
            except OSError as err:
                log.warning("could not remove %s: %s", self.path, err)
            finally:
                self.held = False

    def _remove_if_ours(self) -> None:
        """Move the lock aside, then delete it if it carries our token, else put it back (no
        moment where a lock read as ours may be another holder's by the time it is deleted)."""
        current = read_lock(self.path)
        if not current or current.get("token") != self.info["token"]:
            if current is not None:
                log.warning("%s is held by %s now; leaving it", self.path,
                            describe_holder(current))
            return
        moved = self.path.with_name(f"{self.path.name}.release-{self.info['token']}")
        try:
            os.replace(self.path, moved)
        except FileNotFoundError:
            return
        try:
            if (read_lock(moved) or {}).get("token") != self.info["token"]:
                try:
                    os.link(moved, self.path)  # taken over meanwhile: put it back
                except FileExistsError:
                    pass
        finally:
            moved.unlink(missing_ok=True)

    # --- liveness ------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Rewrite ``heartbeat_time`` now (never raises: liveness must not end a run)."""
        with self._mutex:
            if not self.held:
                return
            try:
                current = read_lock(self.path) or {}
                if current.get("token") != self.info["token"]:
                    log.error("%s was taken over by %s; this run goes on without it",
                              self.path, describe_holder(current))
                    self.held = False
                    return
                self.info["heartbeat_time"] = _now().isoformat(timespec="seconds")
                atomic_write_json(self.path, self.info)
            except OSError as err:
                log.warning("could not refresh %s: %s", self.path, err)

    def _start_thread(self) -> None:
        if self.heartbeat_every_s <= 0:
            return
        self._stop.clear()

        def beat():
            while not self._stop.wait(self.heartbeat_every_s):
                self.heartbeat()

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
