"""Atomic training checkpoints (``last.ckpt``, ``best.ckpt``) in our own format.

A checkpoint is ``torch.save`` of a plain dict: ``format``, ``reason`` (``epoch_end`` /
``preempted``), ``training`` (the module's :meth:`~PtychoModule.training_state`: weights,
optimizer, scheduler, monitor, position, history, best), ``rng`` (python, numpy, torch CPU and
CUDA states), ``wall_s`` (cumulative job seconds at save time), ``config_hash``.
``best.ckpt`` holds ``generator`` weights, ``epoch`` and ``val_loss`` only.

Reading one (:func:`load_checkpoint`) tells a damaged file from a failing disk: content that is
not a checkpoint of ours (truncated, not a zip, unpicklable, another format) raises
:class:`DamagedCheckpoint` (the recorder sets the file aside and the run restarts); an
``OSError`` of the storage itself (EIO, a stale NFS handle, ...) propagates as that
``OSError`` (an infrastructure fault: the file is kept and a rerun reads it again).

Written to a temporary file in the same folder, fsynced, then ``os.replace``d: a job killed
mid-write leaves the previous checkpoint intact.

:class:`CheckpointWriter` takes the writing off the training thread: the job snapshots what it
saves (:func:`snapshot`: tensors copied to the CPU, the rest deep-copied; tens of ms for the
246 MB of a Stage A depth-4 ``last.ckpt``) and a single background thread serialises, fsyncs and
renames, in submission order (so ``history.csv`` never shows an epoch whose ``last.ckpt`` is
not on disk yet). A save took 0.3-0.8 s on this project's CPU machine, 10-20 % of the 4.5 s
epoch the GPU target asks for.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

import numpy as np
import torch

from ptychostab.atomic import atomic_write

__all__ = ["FORMAT", "CheckpointWriter", "DamagedCheckpoint", "atomic_torch_save",
           "load_checkpoint", "rng_state", "set_rng_state", "snapshot"]

FORMAT = "ptychostab.ckpt/1"


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


class DamagedCheckpoint(ValueError):
    """The file's content is not a readable checkpoint of ours (truncated, not a zip,
    unpicklable, another format). Never raised for an error of the storage (EIO, ESTALE,
    ...): that one propagates as the ``OSError`` it is."""


class _Source:
    """The checkpoint file as ``torch.load`` reads it: every ``OSError`` of the file itself is
    kept in :attr:`io_error` (torch may turn it into another exception type on the way out),
    and a seek outside the file, which a truncated zip asks for, is a ``ValueError`` of the
    content instead of the ``OSError`` (EINVAL) the operating system would raise."""

    def __init__(self, fh: IO[bytes]):
        self._fh = fh
        self._size = os.fstat(fh.fileno()).st_size
        self.io_error: OSError | None = None

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as err:
            self.io_error = err
            raise

    def read(self, size: int = -1) -> bytes:
        return self._io(self._fh.read, size)

    def readinto(self, buffer) -> int:
        return self._io(self._fh.readinto, buffer)

    def readline(self, size: int = -1) -> bytes:
        return self._io(self._fh.readline, size)

    def tell(self) -> int:
        return self._io(self._fh.tell)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_END: self._size}.get(whence)
        target = (self.tell() if base is None else base) + offset
        if target < 0:
            raise ValueError(f"seek to byte {target}: the file ({self._size} bytes) is "
                             f"truncated or damaged")
        return self._io(self._fh.seek, offset, whence)

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of our checkpoints onto the CPU.

    ``weights_only=False``: the file holds RNG states (numpy arrays, Python tuples) and was
    written by this job in its own run folder.

    Raises
    ------
    DamagedCheckpoint
        The content is not a checkpoint of ours: a restart sets the file aside.
    OSError
        Opening or reading the file failed (the storage: EIO, ESTALE, EACCES, ...): an
        infrastructure fault, never a damaged file; the file must be kept.
    MemoryError
        Out of memory while loading (the file is not judged).
    """
    from ptychostab.runs.faults import is_oom

    with open(path, "rb") as fh:
        source = _Source(fh)
        try:
            ckpt = torch.load(source, map_location="cpu", weights_only=False)
        except Exception as err:
            if source.io_error is not None:
                raise source.io_error from None
            if is_oom(err):
                raise
            raise DamagedCheckpoint(f"{path} is damaged: {type(err).__name__}: "
                                    f"{str(err)[:300]}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DamagedCheckpoint(f"{path} is not a {FORMAT} checkpoint")
    return ckpt


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def snapshot(obj):
    """A copy of ``obj`` that later training cannot change: tensors copied to the CPU
    (detached; a CPU tensor is cloned), dicts/lists/tuples rebuilt, anything else deep-copied.
    A ``state_dict``'s ``_metadata`` is kept."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = type(obj)((k, snapshot(v)) for k, v in obj.items())
        meta = getattr(obj, "_metadata", None)
        if meta is not None:
            out._metadata = copy.deepcopy(meta)
        return out
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple) and type(obj) is tuple:
        return tuple(snapshot(v) for v in obj)
    return copy.deepcopy(obj)


class CheckpointWriter:
    """Runs write jobs in one background thread, in submission order.

    ``submit(fn, *args)`` queues ``fn(*args)``; the arguments must already be snapshots.
    ``wait()`` blocks until everything queued is written and re-raises the first error.
    ``close()`` waits and stops the thread.
    """

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, fn: Callable, *args) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-writer")
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        error = None
        for fut in pending:
            exc = fut.exception()
            if exc is not None and error is None:
                error = exc
        if error is not None:
            raise error

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
