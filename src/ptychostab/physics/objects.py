"""Grid-lines test objects, numpy.

An object is ``A * exp(i phi)`` with A >= 0 an unbounded amplitude (not a transmission):
random one-pixel lines on a 2S x 2S canvas, blurred as ``G1 + 2 G5 + 5 G10``, centre S x S
kept (drawing on a larger canvas keeps line density and blur uniform up to the crop edge).
All randomness comes from the numpy ``Generator`` passed in.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.draw import line

# (sigma, weight) of the blur sum: fine line core plus two wider halos.
BLUR_TERMS = ((1.0, 1.0), (5.0, 2.0), (10.0, 5.0))


def line_map(rng: np.random.Generator, canvas: int, n_lines: int) -> np.ndarray:
    """Binary map of ``n_lines`` one-pixel lines with endpoints uniform on the canvas.

    Returns
    -------
    ndarray, float64, (canvas, canvas)
    """
    image = np.zeros((canvas, canvas), dtype=np.float64)
    endpoints = rng.integers(0, canvas, size=(n_lines, 4))
    for r0, c0, r1, c1 in endpoints:  # a few hundred lines per object: not a hot loop
        rr, cc = line(int(r0), int(c0), int(r1), int(c1))
        image[rr, cc] = 1.0
    return image


def lines_amplitude(lines: np.ndarray) -> np.ndarray:
    """``G1(L) + 2 G5(L) + 5 G10(L)`` (scipy ``gaussian_filter``, reflect mode, truncate 4)."""
    return sum(w * gaussian_filter(lines, sigma) for sigma, w in BLUR_TERMS)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Centre ``size`` x ``size`` of a square image (offset ``(side - size) // 2``)."""
    start = (image.shape[-1] - size) // 2
    return image[..., start:start + size, start:start + size]


def grid_lines_amplitudes(rng: np.random.Generator, nimgs: int, size: int,
                          n_lines: int) -> np.ndarray:
    """``nimgs`` independent grid-lines amplitudes, drawn one after another from ``rng``.

    Returns
    -------
    ndarray, float64, (nimgs, size, size)
    """
    out = np.empty((nimgs, size, size), dtype=np.float64)
    for k in range(nimgs):
        out[k] = centre_crop(lines_amplitude(line_map(rng, 2 * size, n_lines)), size)
    return out


def dummy_phase(amplitudes: np.ndarray) -> np.ndarray:
    """``pi * tanh((A - max A / 2) / (3 mean A))``, max and mean over the whole split stack.

    Positive only where A exceeds half the maximum (bright line crossings); in (-pi, pi).
    """
    a_max = float(amplitudes.max())
    a_mean = float(amplitudes.mean())
    if a_mean <= 0:
        return np.zeros_like(amplitudes)
    return np.pi * np.tanh((amplitudes - a_max / 2.0) / (3.0 * a_mean))


def grid_lines_objects(rng: np.random.Generator, nimgs: int, size: int, n_lines: int,
                       set_phi: bool) -> np.ndarray:
    """Complex grid-lines objects in raw amplitude units.

    Returns
    -------
    ndarray, complex128, (nimgs, size, size)
    """
    amplitude = grid_lines_amplitudes(rng, nimgs, size, n_lines)
    if not set_phi:
        return amplitude.astype(np.complex128)
    return amplitude * np.exp(1j * dummy_phase(amplitude))
