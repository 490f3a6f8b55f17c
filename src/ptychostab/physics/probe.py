"""Illumination (probe) functions, numpy.

Every probe is an (N, N) complex array centred at ((N-1)/2, (N-1)/2), the centre of the
pixel grid. :func:`simulation_probe` applies the reference's simulation normalisation
``P_sim = P / (probe_scale * mean|D * P|)``; the same ``P_sim`` is stored with the dataset and
used inside the training loss, so the physics of simulation and training are one.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal.windows import gaussian


def _radius_grid(N: int) -> np.ndarray:
    """(N, N) distance in px from the grid centre (N-1)/2 (between the four centre pixels)."""
    c = (N - 1) / 2.0
    y, x = np.mgrid[0:N, 0:N]
    return np.hypot(y - c, x - c)


def normalisation_disk(N: int) -> np.ndarray:
    """(N, N) bool disk of radius N//4 about (N/2 - 0.5, N/2 - 0.5), as the reference's D."""
    return _radius_grid(N) < N // 4


def defocused_disk(N: int, radius: float = 0.25, edge_width: float = 1.5,
                   defocus_phase: float = 2.0) -> np.ndarray:
    """Soft-edged circular aperture with a quadratic (defocus) phase.

    Parameters
    ----------
    N : int
        Probe side in px.
    radius : float
        Aperture radius as a fraction of N.
    edge_width : float
        Width in px of the tanh edge; 0 gives a hard disk.
    defocus_phase : float
        Phase in rad at the aperture edge; the phase is ``defocus_phase * (r / R)**2``.

    Returns
    -------
    ndarray, complex128, (N, N)
    """
    r = _radius_grid(N)
    R = radius * N
    if edge_width > 0:
        amplitude = 0.5 * (1.0 - np.tanh((r - R) / edge_width))
    else:
        amplitude = (r <= R).astype(np.float64)
    phase = defocus_phase * (r / R) ** 2
    return amplitude * np.exp(1j * phase)


def ideal_disk(N: int) -> np.ndarray:
    """The reference's ``ideal_disk`` probe: a real, Gaussian-smoothed disk (radius ~0.17 N).

    ``g = gaussian(N, std=N / (0.7 pi^2))`` normalised to max 1; ``P = G_1(g g^T > 0.5) + 1e-9``.

    Returns
    -------
    ndarray, complex128, (N, N)
    """
    g = gaussian(N, std=N / (0.7 * np.pi**2), sym=True)
    g = g / g.max()
    disk = (np.outer(g, g) > 0.5).astype(np.float64)
    return (gaussian_filter(disk, sigma=1.0) + 1e-9).astype(np.complex128)


def smooth_complex(probe: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth |P| and the unwrapped phase of P separately, then recombine.

    Smoothing real and imaginary parts would blur a phase ramp into the amplitude; the
    reference smooths modulus and unwrapped phase instead, and so do we.
    """
    if sigma <= 0:
        return probe.astype(np.complex128)
    from skimage.restoration import unwrap_phase

    amplitude = gaussian_filter(np.abs(probe), sigma)
    phase = gaussian_filter(unwrap_phase(np.angle(probe)), sigma)
    return amplitude * np.exp(1j * phase)


def load_probe_guess(path: str | os.PathLike, N: int) -> np.ndarray:
    """Load ``probeGuess`` from an NPZ and check it is a finite, non-zero (N, N) array.

    Raises
    ------
    ValueError
        File missing or unreadable, key missing, wrong shape, not numeric, not finite, all zero.
    """
    where = "data.probe.path"
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise ValueError(f"{where}={path!r}: file not found")
    if not zipfile.is_zipfile(path):  # np.load would read it as .npy or try to unpickle it
        try:
            with open(path, "rb") as fh:
                head = fh.read(6)
        except OSError as err:
            raise ValueError(f"{where}={path!r} cannot be read: {err}") from err
        what = ("a .npy array" if head == b"\x93NUMPY" else f"a file of another kind (first "
                f"bytes {head!r})")
        raise ValueError(f"{where}={path!r} is {what}, not an NPZ file: the probe must be an NPZ "
                         f"(a zip archive written by numpy.savez(path, probeGuess=probe)) holding "
                         f"a complex `probeGuess` of shape (N, N)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            raw: Any = npz["probeGuess"] if "probeGuess" in files else None
    except Exception as err:  # not a zip, pickled objects, truncated members
        raise ValueError(f"{where}={path!r} is not a readable NPZ file (not an NPZ, or "
                         f"damaged): {err}") from err
    if raw is None:
        raise ValueError(f"{where}={path!r} has no key 'probeGuess' (keys: {sorted(files)})")
    if not isinstance(raw, np.ndarray):  # a zip whose member is not a .npy array
        raise ValueError(f"{where}={path!r} is not a readable NPZ file (not an NPZ, or damaged): "
                         f"its probeGuess member is not a numpy array")
    if raw.dtype.kind not in "biufc":
        raise ValueError(f"{where}: probeGuess has dtype {raw.dtype}, which cannot be read as "
                         f"a complex probe (need a numeric or complex array)")
    probe = np.squeeze(np.asarray(raw, dtype=np.complex128))
    if probe.shape != (N, N):
        raise ValueError(f"{where}: probeGuess has shape {raw.shape}; need ({N}, {N}) to match "
                         f"data.N={N} (resampling is not supported)")
    if not np.all(np.isfinite(probe)):
        raise ValueError(f"{where}: probeGuess contains NaN or Inf")
    if not np.any(probe):
        raise ValueError(f"{where}: probeGuess is all zeros")
    return probe


def simulation_probe(probe: np.ndarray, probe_scale: float) -> np.ndarray:
    """Normalise as the reference's simulator: ``P / (probe_scale * mean_{NxN} |D * P|)``.

    Parameters
    ----------
    probe : ndarray, complex, (N, N)
    probe_scale : float

    Returns
    -------
    ndarray, complex64, (N, N)
        ``P_sim``, with ``mean|D * P_sim| == 1 / probe_scale``.
    """
    N = probe.shape[-1]
    m = float(np.mean(np.abs(probe * normalisation_disk(N))))
    if m <= 0:
        raise ValueError(f"the probe is zero inside the normalisation disk (radius {N // 4} px "
                         f"about the centre); cannot normalise it")
    return (probe / (probe_scale * m)).astype(np.complex64)


def make_probe(probe_config: Any, N: int) -> np.ndarray:
    """Build ``P_sim`` for a :class:`~ptychostab.data.spec.ProbeConfig`.

    Returns
    -------
    ndarray, complex64, (N, N)
    """
    kind = probe_config.kind
    if kind == "defocused_disk":
        raw = defocused_disk(N, probe_config.radius, probe_config.edge_width,
                             probe_config.defocus_phase)
    elif kind == "ideal_disk":
        raw = ideal_disk(N)
    elif kind == "npz":
        raw = smooth_complex(load_probe_guess(probe_config.path, N), probe_config.smoothing_sigma)
    else:
        raise ValueError(f"data.probe.kind={kind!r} is unknown; allowed: "
                         f"['defocused_disk', 'ideal_disk', 'npz']")
    return simulation_probe(raw, probe_config.probe_scale)
