"""Simulate a grid-lines ptychography dataset (gridsize 1) and cache it.

Recipe (docs/physics.md has the why):

1. Objects: ``nimgs_train`` / ``nimgs_test`` grid-lines objects from numpy Generators seeded
   by ``seed_train`` / ``seed_test``; raw amplitude units.
2. Each split is divided by its ``norm_Y_I`` = mean over its patches of the patch's maximum
   amplitude (as the reference), so all stored objects and patches are in these units.
3. Patches: N x N windows at stride ``outer_offset // 2``, row-major within an object,
   objects concatenated. Never materialised for the train split: a strided view is read
   in batches.
4. Intensity scale ``s = sqrt(nphotons / mean_k sum_xy |O_k P|^2)`` on the train split (by
   Parseval this is the mean photons per pattern), reused for the test split.
5. Counts ``I = (s * predict_amplitude(O_k, P))^2``; Poisson draws from Generators seeded by
   ``noise_seed`` (one stream per split); stored amplitude ``sqrt(counts) / s``.
   ``predict_amplitude`` is the torch function the training loss calls, with the same probe,
   so a perfect reconstruction of ``test_truth`` reproduces the noise-free data exactly.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import correlate

from ptychostab.data import cache
from ptychostab.data.spec import DataConfig
from ptychostab.physics.forward import predict_amplitude
from ptychostab.physics.objects import grid_lines_objects
from ptychostab.physics.probe import make_probe

log = logging.getLogger(__name__)

# Bump whenever the simulated bytes for a given spec change: old cache entries then miss.
SIMULATOR_VERSION = "grid_lines-1"

ARRAY_NAMES = ("train_amp", "test_amp", "probe", "test_truth", "test_object")
_BATCH_ELEMENTS = 1 << 21  # pixels per FFT batch (512 patches at N=64): bounds peak memory


@dataclass
class SimulatedData:
    """A simulated dataset (numpy arrays; C = gridsize**2 = 1).

    Attributes
    ----------
    train_amp : float32 (n_train, C, N, N)
        Noisy measured amplitudes ``sqrt(counts) / s``, DC at (N/2, N/2).
    test_amp : float32 (n_test, C, N, N)
    probe : complex64 (N, N)
        ``P_sim``: the probe of the simulation and of the training loss.
    test_truth : complex64 (n_test, C, N, N)
        Object patches (normalised units) behind ``test_amp``.
    test_object : complex64 (nimgs_test, S, S)
        Whole test objects, normalised units (raw = ``test_object * meta["norm_Y_I"]``).
    meta : dict
        ``intensity_scale``, ``norm_Y_I`` (test), ``norm_Y_I_train``, counts and geometry
        (``n_train``, ``n_test``, ``n_side_*``, ``stride_*``, ``outer_offset_test``), ``spec``,
        ``key``, ``simulator_version``, ``mean_photons_train``; plus ``cache_status``
        (``hit``/``built``/``rebuilt``/``uncached``), set on return and not stored.
    """

    train_amp: np.ndarray
    test_amp: np.ndarray
    probe: np.ndarray
    test_truth: np.ndarray
    test_object: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def spec(self) -> DataConfig:
        return DataConfig.from_any(self.meta["spec"])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in ARRAY_NAMES)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the cache file; ``meta`` travels as UTF-8 JSON bytes."""
        stored = {k: v for k, v in self.meta.items() if k != "cache_status"}
        meta = np.frombuffer(json.dumps(stored, sort_keys=True).encode("utf-8"), dtype=np.uint8)
        return {**{name: getattr(self, name) for name in ARRAY_NAMES}, "meta_json": meta}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SimulatedData:
        meta = json.loads(arrays["meta_json"].tobytes().decode("utf-8"))
        return cls(**{name: arrays[name] for name in ARRAY_NAMES}, meta=meta)


def expected_arrays(spec: DataConfig) -> cache.Expected:
    """Shape and dtype of every stored array (checked on every cache read)."""
    N, C, S = spec.N, spec.channels, spec.size
    return {
        "train_amp": ((spec.n_train, C, N, N), "float32"),
        "test_amp": ((spec.n_test, C, N, N), "float32"),
        "probe": ((N, N), "complex64"),
        "test_truth": ((spec.n_test, C, N, N), "complex64"),
        "test_object": ((spec.nimgs_test, S, S), "complex64"),
    }


# --- geometry --------------------------------------------------------------------------------
def patch_view(objects: np.ndarray, N: int, stride: int) -> np.ndarray:
    """Read-only strided view of all N x N patches: (nimgs, n_side, n_side, N, N), no copy."""
    return sliding_window_view(objects, (N, N), axis=(-2, -1))[:, ::stride, ::stride]


def extract_patches(objects: np.ndarray, N: int, stride: int) -> np.ndarray:
    """Copy of all patches, row-major per object, objects concatenated: (n, N, N)."""
    return patch_view(objects, N, stride).reshape(-1, N, N)


def norm_Y_I(amplitudes: np.ndarray, N: int, stride: int) -> float:
    """Mean over patches of each patch's maximum amplitude (the reference's ``norm_Y_I``)."""
    return float(patch_view(amplitudes, N, stride).max(axis=(-2, -1)).mean())


def mean_illuminated_intensity(objects: np.ndarray, probe: np.ndarray, stride: int) -> float:
    """``mean_k sum_xy |O_k P|^2`` over all patches, as a correlation of |O|^2 with |P|^2.

    By Parseval this is the mean total intensity of a unit-scale pattern, so the photon
    scale needs no FFT of the patches.
    """
    weight = np.abs(probe.astype(np.complex128)) ** 2
    totals = [correlate(np.abs(o.astype(np.complex128)) ** 2, weight, mode="valid",
                        method="fft")[::stride, ::stride] for o in objects]
    return float(np.mean(totals))


# --- diffraction -----------------------------------------------------------------------------
def diffract(patches: np.ndarray, probe: np.ndarray, scale: float,
             rng: np.random.Generator | None) -> np.ndarray:
    """Measured amplitudes of all patches of a strided view, in batches.

    Parameters
    ----------
    patches : complex64 (nimgs, n_side, n_side, N, N)
        Usually a :func:`patch_view` (not copied as a whole).
    probe : complex64 (N, N)
    scale : float
        Intensity scale s: counts are ``(s * A)^2``.
    rng : Generator or None
        Poisson noise source; None gives the noise-free amplitudes ``A``.

    Returns
    -------
    float32 (n, 1, N, N)
        ``sqrt(Poisson((s A)^2)) / s`` (or ``A``), row-major per object.
    """
    nimgs, n_side, _, N, _ = patches.shape
    n = nimgs * n_side * n_side
    out = np.empty((n, 1, N, N), dtype=np.float32)
    probe_t = torch.from_numpy(np.ascontiguousarray(probe))
    batch = max(1, _BATCH_ELEMENTS // (N * N))
    for start in range(0, n, batch):
        k = np.arange(start, min(start + batch, n))
        img, rest = np.divmod(k, n_side * n_side)
        row, col = np.divmod(rest, n_side)
        obj = torch.from_numpy(patches[img, row, col])  # fancy index: copies just this batch
        with torch.no_grad():
            amp = predict_amplitude(obj, probe_t).numpy()
        if rng is not None:
            counts = np.square(amp, dtype=np.float64)
            counts *= scale * scale
            noisy = rng.poisson(counts).astype(np.float64)
            np.sqrt(noisy, out=noisy)
            noisy /= scale
            amp = noisy
        out[start:start + len(k), 0] = amp
    return out


def mean_total_intensity(amplitudes: np.ndarray) -> float:
    """``mean_k sum_xy A_k^2`` in float64, in chunks (no float64 copy of the whole array)."""
    n = amplitudes.shape[0]
    step = max(1, _BATCH_ELEMENTS // max(1, amplitudes[0].size))
    total = sum(float(np.sum(np.square(amplitudes[i:i + step], dtype=np.float64)))
                for i in range(0, n, step))
    return total / n


# --- the whole dataset -----------------------------------------------------------------------
def simulate(spec: Any, *, noise: bool = True) -> SimulatedData:
    """Simulate the dataset described by ``spec`` (no cache).

    Parameters
    ----------
    spec : DataConfig or mapping
    noise : bool
        False skips the Poisson draw (tests); the cache always stores noisy data.
    """
    spec = DataConfig.from_any(spec).validate()
    N = spec.N
    probe = make_probe(spec.probe, N)

    splits = {}
    for split, nimgs, seed, stride in (
        ("train", spec.nimgs_train, spec.seed_train, spec.stride_train),
        ("test", spec.nimgs_test, spec.seed_test, spec.stride_test),
    ):
        raw = grid_lines_objects(np.random.default_rng(seed), nimgs, spec.size, spec.n_lines,
                                 spec.set_phi)
        norm = norm_Y_I(np.abs(raw), N, stride)
        splits[split] = ((raw / norm).astype(np.complex64), norm, stride)
        del raw

    train_obj, norm_train, st_train = splits["train"]
    test_obj, norm_test, st_test = splits["test"]
    # s from the train split only, reused for test (the reference's convention).
    scale = float(np.sqrt(spec.nphotons / mean_illuminated_intensity(train_obj, probe, st_train)))

    # One independent noise stream per split: the test noise does not move with nimgs_train.
    rngs = ([np.random.default_rng([spec.noise_seed, i]) for i in (0, 1)] if noise
            else [None, None])
    train_amp = diffract(patch_view(train_obj, N, st_train), probe, scale, rngs[0])
    del train_obj
    test_amp = diffract(patch_view(test_obj, N, st_test), probe, scale, rngs[1])
    test_truth = extract_patches(test_obj, N, st_test)[:, None]

    mean_photons = mean_total_intensity(train_amp)
    meta = {
        "simulator_version": SIMULATOR_VERSION,
        "key": cache.cache_key(spec, SIMULATOR_VERSION),
        "spec": spec.to_dict(),
        "intensity_scale": scale,
        "norm_Y_I": norm_test,
        "norm_Y_I_train": norm_train,
        "N": N,
        "size": spec.size,
        "channels": spec.channels,
        "nimgs_train": spec.nimgs_train,
        "nimgs_test": spec.nimgs_test,
        "n_train": spec.n_train,
        "n_test": spec.n_test,
        "n_side_train": spec.n_side_train,
        "n_side_test": spec.n_side_test,
        "stride_train": st_train,
        "stride_test": st_test,
        "outer_offset_test": spec.outer_offset_test,
        "noise": bool(noise),
        "mean_photons_train": mean_photons * scale * scale,
        "order": "row-major patches per object, objects concatenated",
        "cache_status": "uncached",
    }
    return SimulatedData(train_amp=train_amp, test_amp=test_amp, probe=probe,
                         test_truth=test_truth, test_object=test_obj, meta=meta)


def load_or_build(spec: Any, cache_dir: str | os.PathLike | None = None) -> SimulatedData:
    """The dataset for ``spec``: from the cache if a valid entry exists, else simulated and
    stored. Validation runs first, before any work.

    Parameters
    ----------
    spec : DataConfig, mapping (dict, OmegaConf DictConfig) or dataclass with the same fields
    cache_dir : path or None
        None: ``$PTYCHOSTAB_CACHE``, else ``<cwd>/.cache/datasets``.

    Returns
    -------
    SimulatedData
        ``meta["cache_status"]`` says ``hit``, ``built`` or ``rebuilt`` (damaged entry).
    """
    spec = DataConfig.from_any(spec).validate()
    key = cache.cache_key(spec, SIMULATOR_VERSION)
    entry = cache.Entry(Path(cache_dir) if cache_dir is not None else cache.default_cache_dir(),
                        key)
    info = {"simulator_version": SIMULATOR_VERSION, "spec": spec.to_dict()}

    def check(arrays: dict[str, np.ndarray]) -> None:
        # Checksummed bytes of another dataset (a file copied under a wrong name) are damaged
        # for this key: never train on them.
        try:
            stored_key = json.loads(arrays["meta_json"].tobytes().decode("utf-8")).get("key")
        except (KeyError, ValueError, UnicodeDecodeError) as err:
            raise cache.DamagedCache(f"meta unreadable: {err}") from err
        if stored_key != key:
            raise cache.DamagedCache(f"holds dataset {stored_key!r}, not {key!r}")

    arrays, status = cache.load_or_create(
        entry, expected_arrays(spec), lambda: simulate(spec).to_arrays(), info, check=check)
    data = SimulatedData.from_arrays(arrays)
    data.meta["cache_status"] = status
    log.info("dataset %s (%s): %s, %d train / %d test patterns", key, spec.name, status,
             data.meta["n_train"], data.meta["n_test"])
    return data
