"""How a job's error becomes a status: infrastructure faults apart from training endings.

:func:`classify` maps an exception raised by a job to ``(status, cause, message)``:

=====================================================  ===========  =========================
error                                                  status       cause
=====================================================  ===========  =========================
:class:`InfraFault` (raised by the job and recorder)   ``infra``    its own (disk, device,
                                                                    data, checkpoint, ...)
OSError ENOSPC/EIO/EDQUOT/EROFS/ESTALE anywhere        ``infra``    ``disk``
CUDA driver/ECC/unavailable-device errors              ``infra``    ``device``
out of memory raised in the process (CUDA or host)     ``oom``      (final)
anything else: an error of our own code                ``exception`` (final, "a bug")
=====================================================  ===========  =========================

Any other ``OSError`` (``FileNotFoundError``, ``PermissionError``, ``EINVAL``, no errno) is
ours: ``exception``, never ``infra`` (which every rerun would retry forever). The recorder
applies the same split to its writes; reading ``last.ckpt`` is the one place where every
``OSError`` is the storage's (``InfraFault("disk")``, the file kept), while damaged content
is set aside and the run restarts (:class:`~.checkpoint.DamagedCheckpoint`).

Messages put the root cause first (``No space left on device while writing <path>``); the
full traceback goes to ``traceback.txt`` in the run folder. A scheduler's out-of-memory kill
never reaches the process (SIGKILL): the launcher records it (``infra``, cause ``memory``).
"""

from __future__ import annotations

import errno
import os

from ptychostab.runs import records

__all__ = ["DISK_ERRNOS", "InfraFault", "classify", "describe_os_error", "is_oom"]

#: OSError numbers that are a fault of the storage, whatever file they hit
DISK_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EIO, getattr(errno, "EDQUOT", None),
                                    errno.EROFS, getattr(errno, "ESTALE", None)) if e)
_DEVICE_PATTERNS = ("no cuda-capable device", "cuda driver", "ecc error", "busy or unavailable",
                    "unspecified launch failure", "cuda error: unknown error", "nvml",
                    "cuda-capable device(s) is/are busy")


class InfraFault(Exception):
    """A fault of the infrastructure (never of the training): recorded as ``infra``.

    Parameters
    ----------
    cause : str
        One of :data:`records.INFRA_CAUSES`.
    message : str
        Root cause first, e.g. ``No space left on device while writing <path>``.
    """

    def __init__(self, cause: str, message: str):
        if cause not in records.INFRA_CAUSES:
            raise ValueError(f"infra cause {cause!r} not in {records.INFRA_CAUSES}")
        super().__init__(message)
        self.cause = cause


def describe_os_error(err: OSError, doing: str, path: str | os.PathLike | None = None) -> str:
    """``No space left on device while writing /x/last.ckpt`` (root cause, action, path)."""
    what = err.strerror or (os.strerror(err.errno) if err.errno else None) or str(err)
    where = path if path is not None else err.filename
    return f"{what} while {doing}{f' {where}' if where else ''} ({type(err).__name__}" \
           f"{f' errno {err.errno}' if err.errno else ''})"


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error raised in this process (CUDA allocator or host)."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(err, (MemoryError, oom_type)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def _device_error(err: BaseException) -> bool:
    text = str(err).lower()
    return (isinstance(err, RuntimeError) and "device-side assert" not in text
            and any(p in text for p in _DEVICE_PATTERNS))


def classify(err: BaseException, traceback_path: str | os.PathLike) -> tuple[str, str | None,
                                                                             str]:
    """``(status, cause, message)`` of a job that raised ``err`` (see the module table)."""
    if isinstance(err, InfraFault):
        return "infra", err.cause, str(err)
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return "infra", "disk", describe_os_error(err, "accessing")
    if is_oom(err):
        return "oom", None, f"{type(err).__name__}: {err}"[:2000]
    if _device_error(err):
        return "infra", "device", f"device fault: {type(err).__name__}: {err}"[:2000]
    return "exception", None, (f"{type(err).__name__}: {err}"[:1800]
                               + f" -- a bug in ptychostab (traceback: {traceback_path})")
