"""The forward model, torch: one implementation for simulation and for the training loss.

Convention (the reference's ``pad_and_diffract`` with ``pad=False``)::

    A = sqrt(fftshift(|FFT2(psi)|^2) / N^2)      over the last two axes

with an unnormalised FFT, no real-space shift and no padding. After the shift the zero
frequency sits at pixel (N/2, N/2). Parseval: ``sum A^2 == sum |psi|^2`` per pattern.

We compute ``|FFT2(psi)| / N`` directly (``torch.abs`` of a complex tensor), which is the same
number, but its gradient at an exactly-zero Fourier coefficient is 0 instead of the
``inf * 0 = NaN`` of ``sqrt(.)`` -- a zero-initialised or collapsed model must not turn a
training run into a NaN failure through the physics layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _as_tensor(x, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    return torch.as_tensor(np.asarray(x), device=device)


def far_field_amplitude(exit_wave: torch.Tensor) -> torch.Tensor:
    """Far-field amplitude of an exit wave.

    Parameters
    ----------
    exit_wave : Tensor, complex, (..., N, N)

    Returns
    -------
    Tensor, real, (..., N, N)
        ``sqrt(fftshift(|FFT2(exit_wave)|^2) / (H * W))``, DC at (H//2, W//2); float32 for
        complex64 input.
    """
    psi = _as_tensor(exit_wave)
    h, w = psi.shape[-2], psi.shape[-1]
    spectrum = torch.fft.fft2(psi, dim=(-2, -1))
    amplitude = torch.abs(spectrum) / math.sqrt(h * w)
    return torch.fft.fftshift(amplitude, dim=(-2, -1))


def illuminate(obj: torch.Tensor, probe: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Exit wave ``scale * O * P``; the (N, N) probe broadcasts over leading axes.

    Parameters
    ----------
    obj : Tensor, complex, (..., N, N)
    probe : Tensor or ndarray, complex, (N, N)
    scale : float
        Intensity scale s (1 inside the loss; the simulator's s when simulating).
    """
    obj = _as_tensor(obj)
    probe = _as_tensor(probe, device=obj.device)
    psi = obj * probe
    return psi * scale if scale != 1.0 else psi


def predict_amplitude(obj: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Predicted diffraction amplitude ``far_field_amplitude(obj * probe)``.

    This is what the training loss compares with the stored amplitudes: with the dataset's
    probe (``SimulatedData.probe``) and the stored object patches it reproduces the
    noise-free data exactly.

    Parameters
    ----------
    obj : Tensor, complex, (B, C, N, N) (any leading axes)
    probe : Tensor or ndarray, complex, (N, N)

    Returns
    -------
    Tensor, real, same shape as ``obj``
    """
    return far_field_amplitude(illuminate(obj, probe))
