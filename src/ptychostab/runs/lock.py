"""``run.lock``: the per-run lock and liveness file (docs/contracts.md, Run records).

While a run is alive its folder holds ``run.lock``, a JSON object::

    {"pid": 4242, "host": "node17", "slurm_job_id": "123_4", "pack_id": null,
     "start_time": "2025-...+00:00", "heartbeat_time": "2025-...+00:00", "token": "9f3c..."}

- created with ``O_CREAT | O_EXCL`` (exactly one holder), removed when the run ends;
- ``heartbeat_time`` is rewritten (atomically) at every epoch end and every
  ``heartbeat_every_s`` seconds by a daemon thread, so it stays fresh through long epochs and
  long setups; the status view calls a run *running* while it is fresh;
- a second process for the same folder is refused with :class:`RunLocked`, which names the
  holder; unless the lock is stale (:func:`stale_reason`): its pid is dead on this host, it was
  written by an earlier incarnation of this same SLURM job (a requeue), its heartbeat is older
  than ``stale_after_s``, or it is unreadable. A stale lock is taken over (logged).

Pure Python (no torch): the status view and the sweep import it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path

from ptychostab.atomic import atomic_write_json

__all__ = ["LOCK", "RunLock", "RunLocked", "describe_holder", "read_lock", "stale_reason"]

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


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def stale_reason(info: dict, *, stale_after_s: float = STALE_AFTER_S,
                 now: _dt.datetime | None = None) -> str | None:
    """Why the lock ``info`` no longer protects a live run, or None when its holder may live."""
    if not info or "pid" not in info:
        return "unreadable lock file"
    here = socket.gethostname()
    if info.get("host") == here and not _pid_alive(info["pid"]):
        return f"pid {info['pid']} is not running on {here}"
    ours = _slurm_job_id()
    if ours and info.get("slurm_job_id") == ours and (
            info.get("host") != here or int(info.get("pid", -1)) != os.getpid()):
        return f"written by an earlier incarnation of SLURM job {ours} (requeued)"
    try:
        beat = _dt.datetime.fromisoformat(str(info.get("heartbeat_time")))
    except ValueError:
        return "no readable heartbeat_time"
    age = ((now or _now()) - beat).total_seconds()
    if age > stale_after_s:
        return f"last heartbeat {age:.0f} s ago (> {stale_after_s:g} s)"
    return None


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
                     "start_time": start, "heartbeat_time": start, "token": uuid.uuid4().hex}
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
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._mutex:
            if self.held and (read_lock(self.path) or {}).get("token") == self.info["token"]:
                self.path.unlink(missing_ok=True)
            self.held = False

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
