"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Write to a temporary file in the destination's folder (same filesystem), fsync, then
``os.replace``. A process killed mid-write leaves the previous version and a stray ``.tmp``.
Every writer of a record, cache entry or checkpoint goes through :func:`atomic_write`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "finite_or_none"]


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0o666 less the umask (read once;
    ``mkstemp`` alone would make every record 0600, unreadable to the rest of a team)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fh)`` on a binary temporary file, then move it onto ``path`` (with the mode
    a plain ``open`` would give it: :data:`FILE_MODE`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_or_none(obj: Any) -> Any:
    """Replace NaN/Inf floats by None recursively: strict JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths sneak into records; never let them crash a job at the end.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (NaN/Inf written as null), sorted keys, atomic."""
    text = json.dumps(finite_or_none(obj), indent=2, sort_keys=True, default=_json_default)
    atomic_write_text(path, text + "\n")
