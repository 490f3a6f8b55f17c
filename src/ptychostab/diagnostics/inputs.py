"""Inputs for the diagnostics: real diffraction amplitudes from an NPZ, or a synthetic stand-in."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["INPUT_KEYS", "load_diffraction", "synthetic_diffraction"]

#: NPZ keys tried in order: our cached datasets, then the reference's debug-script format.
INPUT_KEYS = ("train_amp", "diffraction")


def load_diffraction(path: str | Path, key: str | None = None,
                     max_samples: int | None = None) -> torch.Tensor:
    """Diffraction amplitudes ``(n, C, N, N)`` float32 from an NPZ.

    Parameters
    ----------
    path : path-like
        NPZ holding ``train_amp`` or ``diffraction`` (or ``key``), shape ``(n, N, N)`` or
        ``(n, C, N, N)``.
    key : str, optional
        Array to read instead of the first of :data:`INPUT_KEYS` present.
    max_samples : int, optional
        Keep the first ``max_samples`` patches.
    """
    with np.load(path) as npz:
        keys = (key,) if key else INPUT_KEYS
        found = next((k for k in keys if k in npz.files), None)
        if found is None:
            raise KeyError(f"{path}: none of {list(keys)} in the NPZ (has {npz.files})")
        arr = npz[found][:max_samples]
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{path}[{found!r}]: expected (n, N, N) or (n, C, N, N) square "
                         f"patches, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _smooth_field(n: int, N: int, corr: float, gen: torch.Generator) -> torch.Tensor:
    """Zero-mean, unit-std random field with Gaussian correlation length ``corr`` pixels."""
    noise = torch.randn(n, N, N, generator=gen)
    f = torch.fft.fftfreq(N)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    kernel = torch.exp(-2 * (math.pi * corr) ** 2 * k2)  # Gaussian blur, in Fourier space
    field = torch.fft.ifft2(torch.fft.fft2(noise) * kernel).real
    field = field - field.mean(dim=(-2, -1), keepdim=True)
    return field / field.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def synthetic_diffraction(n: int = 8, channels: int = 1, N: int = 64,
                          seed: int = 0) -> torch.Tensor:
    """Positive, diffraction-like amplitudes ``(n, C, N, N)`` when no data file is given.

    Each patch is the far-field amplitude ``|fftshift(fft2(O P))| / N`` of a smooth random
    object ``O = (0.6 + 0.3 a) exp(i (pi/2) p)`` (``a``, ``p`` Gaussian-correlated random
    fields, 4 px) under a soft-edged disk probe of radius ``N/4``, scaled so the batch mean is
    1. It has what matters to the drift check (strictly positive values, a bright central
    peak, a heavy-tailed fall-off), not the study's grid-lines statistics.
    """
    gen = torch.Generator().manual_seed(seed)
    m = n * channels
    amp = 0.6 + 0.3 * _smooth_field(m, N, 4.0, gen).clamp(-1.5, 1.5)
    obj = amp * torch.exp(1j * (math.pi / 2) * _smooth_field(m, N, 4.0, gen))
    r = torch.hypot(*torch.meshgrid(torch.arange(N) - N / 2, torch.arange(N) - N / 2,
                                    indexing="ij"))
    probe = torch.sigmoid((N / 4 - r) / 1.5)
    far = torch.fft.fftshift(torch.fft.fft2(obj * probe), dim=(-2, -1)).abs() / N
    far = far + 1e-3 * far.mean()  # strictly positive: no exact zeros off the peak
    return (far / far.mean()).reshape(n, channels, N, N).float()
