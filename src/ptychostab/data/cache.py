"""Content-addressed, checksummed, locked on-disk cache of simulated datasets.

Layout under the cache folder (``$PTYCHOSTAB_CACHE``, else ``<cwd>/.cache/datasets``)::

    <key>.npz    the arrays (uncompressed: loading is a plain read)
    <key>.json   sidecar: sha256 and size of the .npz, key, spec, simulator version
    <key>.lock   lock file (``filelock``); only writers take it

The key is a hash of every field that shapes the data (:func:`cache_key`). Writers hold the
lock, write both files to temporary names and ``os.replace`` them (npz first, sidecar last),
so a reader sees either a whole entry or one whose checksum does not match. A reader that
finds a mismatch takes the lock and looks again before calling the entry damaged: a writer
may have been halfway through the two renames. A damaged entry is logged, deleted and
rebuilt -- never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from ptychostab.atomic import atomic_write, atomic_write_text
from ptychostab.data.spec import DataConfig

log = logging.getLogger(__name__)

CACHE_ENV = "PTYCHOSTAB_CACHE"
KEY_LENGTH = 20  # hex digits of sha256 kept in the key (80 bits)
LOCK_TIMEOUT_S = 3600.0
_CHUNK = 8 << 20


class DamagedCache(Exception):
    """An entry exists but cannot be trusted (checksum, truncation, missing arrays)."""


def default_cache_dir() -> Path:
    """``$PTYCHOSTAB_CACHE`` if set, else ``<cwd>/.cache/datasets``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.cwd() / ".cache" / "datasets"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def shaping_fields(spec: DataConfig, simulator_version: str) -> dict:
    """Everything that changes the simulated bytes: all fields but ``name``, the simulator
    version and, for an NPZ probe, the probe file's content hash (a file edited in place
    must not hit the old entry)."""
    # Through from_any(dict): an int given for a float field (nphotons=10**9) keys as 1e9.
    fields = DataConfig.from_any(spec.to_dict()).to_dict()
    fields.pop("name", None)
    fields["simulator_version"] = simulator_version
    if spec.probe.kind == "npz":
        fields["probe_file_sha256"] = file_sha256(os.path.expanduser(str(spec.probe.path)))
    return fields


def cache_key(spec: DataConfig, simulator_version: str) -> str:
    """Hex key: sha256 of the canonical JSON of :func:`shaping_fields`, first 20 digits."""
    canonical = json.dumps(shaping_fields(spec, simulator_version), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:KEY_LENGTH]


class Entry:
    """Paths of one cache entry."""

    def __init__(self, cache_dir: str | os.PathLike, key: str):
        self.dir = Path(cache_dir)
        self.key = key
        self.npz = self.dir / f"{key}.npz"
        self.sidecar = self.dir / f"{key}.json"
        self.lock = self.dir / f"{key}.lock"

    def exists(self) -> bool:
        return self.npz.exists() or self.sidecar.exists()

    def remove(self) -> None:
        for path in (self.sidecar, self.npz):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


Expected = dict[str, tuple[tuple[int, ...], str]]  # array name -> (shape, dtype str)


class _HashingReader:
    """File reader that feeds every byte it returns to a hash (for numpy's header parser)."""

    def __init__(self, fh, digest):
        self.fh, self.digest = fh, digest

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.digest.update(data)
        return data

    def read_into(self, buffer: memoryview) -> None:
        """Fill ``buffer`` completely, hashing chunk by chunk while it is in the CPU cache."""
        for start in range(0, len(buffer), _CHUNK):
            chunk = buffer[start:start + _CHUNK]
            got = 0
            while got < len(chunk):
                n = self.fh.readinto(chunk[got:])
                if not n:
                    raise EOFError("unexpected end of file")
                got += n
            self.digest.update(chunk)


def read_npz_hashed(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """Load an uncompressed ``.npz`` and its sha256 in ONE sequential pass over the file.

    ``np.load`` plus a separate hash reads the file twice and also computes zip CRCs; this
    reads each member straight into its final array and hashes the bytes on the way (the
    whole file, headers and central directory included, so the digest is the file's
    sha256). Only the layout ``np.savez`` writes is accepted: stored members, back to back.
    """
    digest = hashlib.sha256()
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh:
        infos = sorted(zipfile.ZipFile(fh).infolist(), key=lambda i: i.header_offset)
        fh.seek(0)
        reader = _HashingReader(fh, digest)
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not a stored .npy")
            if fh.tell() != info.header_offset:
                raise ValueError(f"member {info.filename!r} is not where the directory says")
            local = reader.read(30)  # zip local file header; name and extra lengths at 26..30
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            reader.read(name_len + extra_len)
            data_start = fh.tell()
            version = np.lib.format.read_magic(reader)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(reader)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(reader)
            else:
                raise ValueError(f"member {info.filename!r}: .npy format {version}")
            if fortran or dtype.hasobject:
                raise ValueError(f"member {info.filename!r}: unexpected layout {dtype}")
            arr = np.empty(shape, dtype=dtype)
            reader.read_into(memoryview(arr.reshape(-1).view(np.uint8)))
            if fh.tell() - data_start != info.file_size:
                raise ValueError(f"member {info.filename!r} has the wrong size")
            arrays[info.filename[:-4]] = arr
        while reader.read(_CHUNK):  # the central directory, hashed too
            pass
    return arrays, digest.hexdigest()


def read_entry(entry: Entry, expected: Expected,
               check: Callable[[dict[str, np.ndarray]], None] | None = None
               ) -> dict[str, np.ndarray]:
    """Verify the checksum, load every array, check shapes/dtypes and run ``check``
    (which raises :class:`DamagedCache` on content that does not belong to this entry).

    Raises
    ------
    FileNotFoundError
        Neither file exists (a plain miss).
    DamagedCache
        Anything else that is wrong.
    """
    if not entry.exists():
        raise FileNotFoundError(entry.npz)
    try:
        side = json.loads(entry.sidecar.read_text(encoding="utf-8"))
        want_sha, want_bytes = side["sha256"], int(side["bytes"])
    except FileNotFoundError as err:
        raise DamagedCache(f"sidecar {entry.sidecar.name} missing") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DamagedCache(f"sidecar {entry.sidecar.name} unreadable: {err}") from err
    try:
        size = entry.npz.stat().st_size
    except FileNotFoundError as err:
        raise DamagedCache(f"{entry.npz.name} missing") from err
    if size != want_bytes:  # truncation: caught without hashing
        raise DamagedCache(f"{entry.npz.name} has {size} bytes, sidecar says {want_bytes}")
    try:
        arrays, sha = read_npz_hashed(entry.npz)
    except Exception as err:  # zip/format errors: truncated members, foreign layout
        raise DamagedCache(f"{entry.npz.name} unreadable: {err}") from err
    if sha != want_sha:
        raise DamagedCache(f"{entry.npz.name} checksum mismatch")
    for name, (shape, dtype) in expected.items():
        arr = arrays.get(name)
        if arr is None:
            raise DamagedCache(f"{entry.npz.name} lacks array {name!r}")
        if arr.shape != tuple(shape) or str(arr.dtype) != dtype:
            raise DamagedCache(f"{entry.npz.name}: {name} is {arr.dtype}{arr.shape}, "
                               f"expected {dtype}{tuple(shape)}")
    if check is not None:
        check(arrays)
    return arrays


def write_entry(entry: Entry, arrays: dict[str, np.ndarray], info: dict) -> None:
    """Write the npz and then its sidecar, each atomically. Call with the lock held."""
    entry.dir.mkdir(parents=True, exist_ok=True)
    atomic_write(entry.npz, lambda fh: np.savez(fh, **arrays))
    side = {**info, "key": entry.key, "sha256": file_sha256(entry.npz),
            "bytes": entry.npz.stat().st_size, "created_unix": time.time()}
    text = json.dumps(side, indent=2, sort_keys=True) + "\n"
    atomic_write_text(entry.sidecar, text)


def load_or_create(entry: Entry, expected: Expected, build: Callable[[], dict[str, np.ndarray]],
                   info: dict, check: Callable[[dict[str, np.ndarray]], None] | None = None,
                   lock_timeout: float = LOCK_TIMEOUT_S) -> tuple[dict[str, np.ndarray], str]:
    """Return ``(arrays, status)`` with status ``"hit"``, ``"built"`` or ``"rebuilt"``.

    A valid entry is read without the lock. Otherwise the lock is taken, the entry read again
    (another process may have just finished it) and, if still absent or damaged, built and
    written while holding the lock; a second process building the same key waits and loads.
    """
    try:
        return read_entry(entry, expected, check), "hit"
    except (FileNotFoundError, DamagedCache) as err:
        log.debug("dataset cache %s: %s; taking the lock", entry.key, err)
    entry.dir.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(entry.lock), timeout=lock_timeout):
            damaged = None
            try:
                return read_entry(entry, expected, check), "hit"
            except FileNotFoundError:
                pass
            except DamagedCache as err:
                damaged = str(err)
                log.warning("dataset cache entry %s in %s is damaged (%s); deleting and "
                            "rebuilding it", entry.key, entry.dir, damaged)
                entry.remove()
            arrays = build()
            write_entry(entry, arrays, info)
            return arrays, ("rebuilt" if damaged else "built")
    except Timeout as err:
        raise TimeoutError(f"waited {lock_timeout:.0f} s for the lock {entry.lock}; another "
                           f"process is building this dataset or left a stale lock") from err
