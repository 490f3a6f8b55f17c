"""The per-run recorder: every side effect of one run, behind four hooks.

One :class:`RunRecorder` per run folder (``<sweep>/<arm_id>/seed=<k>/``) owns every file the
run writes there (docs/contracts.md, Run records):

==================  =====================================================================
``run.lock``        taken first by :meth:`~RunRecorder.start` (:mod:`.lock`): a second live
                    process for the folder is refused (:class:`~.lock.RunLocked`) before any
                    file is touched; heartbeat at every epoch end; removed by ``end``
``run.log``         a :class:`logging.FileHandler` on the root logger for the run's duration
                    (with or without Hydra), appended across segments, never set aside
``manifest.json``   at start, when the job has built its objects (``device``, ``effective``),
                    at every restart; carries ``segments`` (one per process), ``restarts``
                    and the fields sinks add (:meth:`~RunRecorder.annotate`)
``last.ckpt``       every epoch end and at a stop signal (:meth:`~RunRecorder.save_last`)
``best.ckpt``       on a better validation loss (written *before* that epoch's
                    ``last.ckpt``: a resume point never refers to a best that is not on disk)
``history.csv``     every epoch end, after ``last.ckpt``
``result.json``     at every ending, as :func:`records.may_replace` allows (never demoted)
``recon.npz``,      written through :meth:`~RunRecorder.write_bytes` /
``traceback.txt``   :meth:`~RunRecorder.write_traceback`
==================  =====================================================================

Checkpoint and history writes go through one background :class:`.CheckpointWriter`, in
submission order. Every write is atomic (:mod:`ptychostab.atomic`); a fault of the storage
while writing (:data:`~.faults.DISK_ERRNOS`: ENOSPC, EIO, EDQUOT, EROFS, ESTALE) becomes
:class:`~.faults.InfraFault` (cause ``disk``, message ``No space left on device while writing
<path> ...``); any other ``OSError`` (``FileNotFoundError``, ``PermissionError``, ...) is raised
as it is: an error of our own code, recorded ``exception``. Reading ``last.ckpt`` is stricter:
every ``OSError`` there is the storage's (``infra``/``disk``, the file kept); only damaged
content (:class:`~.checkpoint.DamagedCheckpoint`) sets it aside for a restart.

The hooks, in the order the job calls them::

    rec = RunRecorder(run_dir, config=resolved, arm=..., arm_id=..., overrides=..., sinks=[...])
    rec.start(retry=("oom",))           # lock, run.log, retry set-aside, last.ckpt, manifest
    ...rec.checkpoint...                # the loaded last.ckpt (None: fresh start)
    rec.epoch_end(module, row, is_best) # at every epoch end (the module's callback)
    rec.write_result(record)            # the ending (final or not)
    rec.end(record)                     # always (finally): sinks, writes drained, lock released

:meth:`~RunRecorder.restart` (a damaged ``last.ckpt``, or a requested retry of a final run)
sets aside every file the recorder and its sinks own (``last.ckpt.damaged-<n>``,
``<file>.restart-<n>``, ``<file>.retry-<n>``: kept, renamed), appends to the manifest's
``restarts`` and logs it; the run then starts from its beginning in place.

Sinks
-----
Later per-run side effects (trackers, activations) are :class:`~.sink.Sink` objects passed as
``sinks=`` (the job builds them with :func:`ptychostab.runs.sinks.build_sinks`); each gets the
same hooks and owns the files it names in ``files`` (set aside at a restart). A sink writes
through ``run.submit(name, fn, *args)`` (background, ordered after that epoch's checkpoint) or
``run.write_bytes``; it stores ids that must survive a resume in the manifest with
``run.annotate(key, value)`` and reads them back from ``run.previous_manifest``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ptychostab.runs import records
from ptychostab.runs.checkpoint import (
    FORMAT,
    CheckpointWriter,
    DamagedCheckpoint,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    snapshot,
)
from ptychostab.runs.environment import (
    config_digest,
    device_info,
    git_info,
    host_info,
    package_versions,
    slurm_ids,
)
from ptychostab.runs.faults import DISK_ERRNOS, InfraFault, describe_os_error
from ptychostab.runs.lock import RunLock
from ptychostab.runs.runlog import RunLog
from ptychostab.runs.sink import Sink

__all__ = ["RunRecorder", "now"]

log = logging.getLogger(__name__)

_SET_ASIDE = re.compile(r"\.(?:damaged|restart|retry)-(\d+)$")
_UNSET = object()


def now() -> str:
    """UTC now, ISO 8601 to the second (the records' timestamps)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunRecorder:
    """Every per-run side effect of one run folder (see the module docstring).

    Parameters
    ----------
    run_dir : path
        The run folder (created on first write).
    config : dict
        The resolved config (plain containers); gives ``sweep``, ``seed`` and the hash.
    arm : dict
        The arm, as in the manifest.
    arm_id : str
    overrides : list of str
    sinks : iterable of Sink
        Further per-run side effects (trackers, activations), called at every hook.
    pack_id : str, optional
        The pack the run belongs to (written to ``run.lock`` and the segment).
    pack : dict, optional
        The manifest's ``pack`` block (``{"id", "size", "members"}``); null when the run is
        alone in its process (a later unpacked segment does not inherit an earlier block).
    stale_after_s, heartbeat_every_s : float
        Liveness of ``run.lock`` (:class:`~.lock.RunLock`).
    """

    #: files of the recorder itself that a restart or retry sets aside (``run.log``,
    #: ``manifest.json`` and ``run.lock`` stay: they narrate the whole folder)
    OWNED = (records.RESULT, records.HISTORY, records.LAST_CKPT, records.BEST_CKPT,
             records.RECON, records.TRACEBACK)

    def __init__(self, run_dir: str | os.PathLike, *, config: dict, arm: dict, arm_id: str,
                 overrides: Sequence[str] = (), sinks: Iterable[Sink] = (),
                 pack_id: str | None = None, pack: dict | None = None,
                 stale_after_s: float | None = None,
                 heartbeat_every_s: float | None = None):
        self.run_dir = Path(run_dir)
        self.config, self.arm, self.arm_id = config, dict(arm), arm_id
        self.overrides = list(overrides)
        self.sweep, self.seed = config.get("sweep"), int(config["seed"])
        self.config_hash = config_digest(config)
        self.sinks = list(sinks)
        self.run_id = uuid.uuid4().hex[:12]
        self.writer = CheckpointWriter()
        lock_kw = {k: v for k, v in (("stale_after_s", stale_after_s),
                                     ("heartbeat_every_s", heartbeat_every_s)) if v is not None}
        self.lock = RunLock(self.path(records.RUN_LOCK), pack_id=pack_id, **lock_kw)
        self.run_log = RunLog(self.path(records.RUN_LOG), self.run_id)
        old = records.read_json(self.path(records.MANIFEST))
        self.previous_manifest: dict = old.data if old.ok else {}
        self.restarts: list[dict] = list(self.previous_manifest.get("restarts", []))
        self.fields: dict = {"pack": dict(pack) if pack is not None else None}
        self.segment = {"id": self.run_id, "start_time": now(), "resumed_from": None,
                        "slurm": slurm_ids(), "host": host_info()["hostname"],
                        "pid": os.getpid(), "pack_id": pack_id}
        self.device = None
        self.effective: dict | None = None
        self.checkpoint: dict | None = None
        self.started = self.ended = False
        self._t0, self.wall_offset = time.monotonic(), 0.0
        self._static: dict | None = None
        self._write_failed = False
        self._stale: str | None = None

    # --- small helpers ---------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.run_dir / name

    def clock(self) -> float:
        """Wall seconds of the run: cumulative over resumed segments, from 0 after a restart."""
        return self.wall_offset + time.monotonic() - self._t0

    def prior_result(self) -> records.Loaded:
        return records.read_json(self.path(records.RESULT))

    @contextlib.contextmanager
    def _disk(self, path: Path, doing: str = "writing", *, any_os_error: bool = False):
        """A fault of the storage inside (an ``OSError`` whose errno is in
        :data:`~.faults.DISK_ERRNOS`; with ``any_os_error`` every ``OSError``) becomes
        ``InfraFault("disk", "<cause> while writing <path>")``; any other ``OSError`` is
        raised as it is (an error of our own code: ``exception``)."""
        try:
            yield
        except OSError as err:
            if any_os_error or err.errno in DISK_ERRNOS:
                raise InfraFault("disk", describe_os_error(err, doing, path)) from err
            if hasattr(err, "add_note"):  # Python >= 3.11: the traceback names the path
                err.add_note(f"(while {doing} {path})")
            raise

    def _guarded(self, path: Path, fn: Callable, *args) -> None:
        # Runs in the writer thread, in order: after a failed write the ones queued behind it
        # are skipped until the next drain reports it (history.csv never runs ahead of a
        # last.ckpt that did not land).
        if self._write_failed:
            return
        try:
            with self._disk(path):
                fn(*args)
        except BaseException:
            self._write_failed = True
            raise

    def submit(self, name: str, fn: Callable, *args) -> None:
        """Queue ``fn(*args)`` (args already snapshots) writing ``name`` on the background
        writer, in order; the next drain raises its error (a fault of the storage as
        :class:`~.faults.InfraFault`, see :meth:`_disk`)."""
        self.writer.submit(self._guarded, self.path(name), fn, *args)

    def drain(self, strict: bool = True) -> None:
        """Wait for the queued writes; ``strict=False`` logs an error instead of raising
        (an ending being recorded must not be hidden by it)."""
        try:
            self.writer.wait()
        except Exception as err:
            if strict:
                raise
            log.error("writing checkpoints/history failed: %s", err)
        finally:
            self._write_failed = False  # nothing is queued any more

    # --- hooks -----------------------------------------------------------------------------
    def start(self, *, retry: Iterable[str] = ()) -> None:
        """Take ``run.lock`` (:class:`~.lock.RunLocked` if a live process has it: nothing
        touched), open ``run.log``, set a retried final record aside, load ``last.ckpt`` into
        :attr:`checkpoint` (a damaged one: :meth:`restart`), write the manifest, start sinks."""
        if self.started:
            return
        self.take_lock()
        stale, self.started = self._stale, True
        self.run_log.open()
        log.info("=== %s: segment %s, pid %d on %s", self.run_dir, self.run_id, os.getpid(),
                 self.segment["host"])
        if stale:
            log.warning("took over the stale run.lock of %s", stale)
        prior = self.prior_result()
        status = prior.data.get("status") if prior.ok else None
        if records.is_final(status) and status in set(retry):
            self.restart("retry", f"retry={sorted(set(retry))}: training the {status} run again "
                                  "from scratch")
        self.checkpoint = self._load_last()
        self.write_manifest()
        for sink in self.sinks:
            sink.on_start(self)

    def take_lock(self) -> None:
        """Take ``run.lock`` now, before :meth:`start` (a pack takes every member's lock
        before it touches any folder); :class:`~.lock.RunLocked`: nothing touched."""
        if not self.lock.held:
            self._stale = self.lock.acquire()

    def epoch_end(self, module, row: dict, is_best: bool) -> None:
        """best.ckpt (if better), last.ckpt, history.csv, snapshotted now, written in that
        order in the background (the previous epoch's writes are waited for first: at most
        one epoch in flight, and their fault is raised here); heartbeat; sinks."""
        self.drain()
        state = self._last_state(module, "epoch_end")
        if is_best:  # the same CPU copy of the weights (read-only from here on)
            best = {"format": FORMAT, "generator": state["training"]["generator"],
                    "epoch": row["epoch"], "val_loss": row["val_loss"]}
            self.submit(records.BEST_CKPT, atomic_torch_save, best, self.path(records.BEST_CKPT))
        self.submit(records.LAST_CKPT, atomic_torch_save, state, self.path(records.LAST_CKPT))
        self.submit(records.HISTORY, records.write_history, self.path(records.HISTORY),
                    snapshot(module.history))
        self.lock.heartbeat()
        for sink in self.sinks:
            sink.on_epoch_end(self, module, row, is_best)

    def ready(self, module) -> None:
        """The job built (and on a resume restored) ``module``: sinks' ``on_ready``."""
        for sink in self.sinks:
            sink.on_ready(self, module)

    def sync(self, module, step: int, values: dict) -> None:
        """A sync point of the training loop: sinks' ``on_sync``."""
        for sink in self.sinks:
            sink.on_sync(self, module, step, values)

    def end(self, record: dict | None = None) -> None:
        """Always, once (``finally``): sinks' ``on_end``, queued writes drained, writer
        stopped, ``run.log`` closed, ``run.lock`` released. Never raises."""
        if self.ended:
            return
        self.ended = True
        if self.started:
            for sink in reversed(self.sinks):
                try:
                    sink.on_end(self, record)
                except Exception as err:
                    log.warning("sink %s failed at the end: %r", type(sink).__name__, err)
        self.drain(strict=False)
        try:
            self.writer.close()
        except Exception as err:
            log.error("closing the checkpoint writer failed: %s", err)
        if self.started:
            log.info("=== %s: segment %s ends (%s)", self.run_dir, self.run_id,
                     (record or {}).get("status", "no record"))
        self.run_log.close()
        self.lock.release()

    def restart(self, kind: str, reason: str) -> dict:
        """Set aside every owned file (kept, renamed ``<name>.<restart|retry>-<n>``, a damaged
        ``last.ckpt`` as ``last.ckpt.damaged-<n>``), record the event in the manifest's
        ``restarts``, log it, tell the sinks; the run then starts from its beginning.

        Parameters
        ----------
        kind : {"restart", "retry"}
            ``restart``: the checkpoint was damaged; ``retry``: a final record was asked to
            be trained again (``retry=[...]``).
        reason : str
        """
        if kind not in ("restart", "retry"):
            raise ValueError(f"restart kind {kind!r}")
        self.drain(strict=False)
        n = self._next_index()
        moved = {}
        names = dict.fromkeys((*self.OWNED, *(f for s in self.sinks for f in s.files)))
        for name in names:
            src = self.path(name)
            if not src.exists():
                continue
            suffix = "damaged" if kind == "restart" and name == records.LAST_CKPT else kind
            dst = src.with_name(f"{name}.{suffix}-{n}")
            with self._disk(src, "setting aside"):
                os.replace(src, dst)
            moved[name] = dst.name
        event = {"n": n, "kind": kind, "reason": reason, "time": now(),
                 "segment": self.run_id, "set_aside": moved}
        self.restarts.append(event)
        self.checkpoint, self.wall_offset, self._t0 = None, 0.0, time.monotonic()
        log.warning("RESTART %s from its beginning (%s #%d): %s; set aside: %s", self.run_dir,
                    kind, n, reason, ", ".join(f"{a} -> {b}" for a, b in moved.items()) or "-")
        for sink in self.sinks:
            sink.on_restart(self, event)
        self.write_manifest()
        return event

    # --- checkpoints -------------------------------------------------------------------------
    def _load_last(self) -> dict | None:
        path = self.path(records.LAST_CKPT)
        if not path.exists():
            return None
        try:
            # an OSError reading it is the storage's (EIO, ESTALE, EACCES, ...): infra/disk,
            # the file stays; only damaged content is set aside and the run restarts
            with self._disk(path, "reading", any_os_error=True):
                ckpt = load_checkpoint(path)
        except DamagedCheckpoint as err:  # truncated, not a zip, unpicklable, not our format
            cause = err.__cause__ if err.__cause__ is not None else err
            self.restart("restart", f"{records.LAST_CKPT} is damaged "
                                    f"({type(cause).__name__}: {str(cause)[:300]})")
            return None
        if ckpt.get("config_hash") != self.config_hash:
            log.warning("resuming %s with a different config (hash %s -> %s)", self.run_dir,
                        ckpt.get("config_hash"), self.config_hash)
        self.wall_offset = float(ckpt["wall_s"])
        return ckpt

    def resumed(self, module) -> None:
        """The job restored :attr:`checkpoint` into ``module``: note it, rewrite history."""
        self.segment["resumed_from"] = {
            "epoch": module.epoch, "step_in_epoch": module.step_in_epoch,
            "global_step": module.global_step_count, "reason": self.checkpoint.get("reason")}
        self.write_history(module.history)
        log.info("RESUME %s at epoch %d step %d", self.run_dir, module.epoch,
                 module.global_step_count)

    def _last_state(self, module, reason: str) -> dict:
        return snapshot({"format": FORMAT, "reason": reason,
                         "training": module.training_state(), "rng": rng_state(),
                         "wall_s": self.clock(), "config_hash": self.config_hash})

    def save_last(self, module, reason: str, wait: bool = True) -> dict:
        """Snapshot the training state now and write ``last.ckpt`` (waits unless ``wait`` is
        False); returns the snapshot."""
        state = self._last_state(module, reason)
        self.submit(records.LAST_CKPT, atomic_torch_save, state, self.path(records.LAST_CKPT))
        if wait:
            self.drain()
        return state

    def _next_index(self) -> int:
        found = [int(m.group(1)) for p in (self.run_dir.iterdir() if self.run_dir.exists()
                                           else ()) if (m := _SET_ASIDE.search(p.name))]
        return max([0, *found, *(int(e.get("n", 0)) for e in self.restarts)]) + 1

    # --- records -------------------------------------------------------------------------------
    def annotate(self, key: str, value: Any) -> None:
        """Set a top-level manifest field owned by a sink (e.g. ``trackers``) and rewrite the
        manifest; it is carried into later segments until a sink changes it."""
        self.fields[key] = value
        self.write_manifest()

    def write_manifest(self, *, device: Any = _UNSET, effective: Any = _UNSET) -> None:
        if device is not _UNSET:
            self.device = device
        if effective is not _UNSET:
            self.effective = effective
        if self._static is None:
            self._static = {"git": git_info(), "versions": package_versions(),
                            "host": host_info()}
        old = self.previous_manifest
        segments = [s for s in old.get("segments", []) if s.get("id") != self.run_id]
        segments.append(self.segment)
        manifest = {k: v for k, v in old.items()}  # sinks' fields of earlier segments
        manifest.update({
            "schema_version": records.SCHEMA_VERSION, "sweep": self.sweep, "arm": self.arm,
            "arm_id": self.arm_id, "seed": self.seed, "overrides": self.overrides,
            "config": self.config, "config_hash": self.config_hash, **self._static,
            "device": device_info(self.device) if self.device is not None else None,
            "slurm": slurm_ids(), "start_time": segments[0]["start_time"],
            "effective": self.effective, "segments": segments, "restarts": self.restarts,
            **self.fields})
        with self._disk(self.path(records.MANIFEST)):
            records.atomic_write_json(self.path(records.MANIFEST), manifest)

    def write_history(self, rows: list[dict]) -> None:
        with self._disk(self.path(records.HISTORY)):
            records.write_history(self.path(records.HISTORY), rows)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self._disk(self.path(name)):
            records.atomic_write_bytes(self.path(name), data)

    def write_traceback(self, err: BaseException) -> Path:
        """The full traceback to ``traceback.txt`` (best effort: a full disk is logged)."""
        path = self.path(records.TRACEBACK)
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        try:
            records.atomic_write_text(path, text)
        except OSError as write_err:
            log.error("could not write %s (%s); the traceback:\n%s", path, write_err, text)
        return path

    def write_result(self, record: dict, *, by_run: bool = True) -> dict:
        """Write ``result.json`` unless the never-demote rule (:func:`records.may_replace`)
        keeps the current one; returns what ``result.json`` now holds."""
        current = self.prior_result()
        status = current.data.get("status") if current.ok else None
        if not records.may_replace(status, record["status"], by_run=by_run):
            log.warning("%s keeps its %s record: a %s record may not replace it", self.run_dir,
                        status, record["status"])
            return current.data
        with self._disk(self.path(records.RESULT)):
            records.atomic_write_json(self.path(records.RESULT), record)
        word = ("DONE" if record["status"] == records.OK else
                "FAILED" if records.is_final(record["status"]) else "STOPPED")
        log.info("%s %s: %s", word, self.run_dir, record["status"])
        return record
