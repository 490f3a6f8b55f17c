"""Reconstruction metrics: amplitude and phase SSIM, MAE, PSNR and FRC.

Alignment before scoring (:func:`align`), after trimming ``trim`` px on every side:

- amplitude: ``|pred|`` scaled by ``mean|truth| / mean|pred|`` (absolute scale is not
  identified by the physics);
- phase: the prediction is first rotated by its optimal global phase
  ``angle(sum pred * conj(truth))`` (the e^{ic} gauge: amplitude data cannot fix it, and a
  constant offset must not wrap phases across +-pi), then a least-squares plane
  ``c0 x + c1 y + c2`` is removed from the prediction's and the truth's phase separately (the
  reference's ``fit_and_remove_plane``; no unwrapping).

Metrics:

- SSIM: scikit-image defaults (7x7 window). Amplitude ``data_range = max - min`` of the truth;
  phase on ``(phi + pi) / (2 pi)`` with ``data_range = 1`` (the reference's convention).
- MAE: mean absolute difference (amplitude units of the truth; phase in rad).
- PSNR: ``10 log10(R^2 / MSE)`` with ``R = max - min`` of the truth (not the reference's
  fixed 255); ``inf`` for identical images, NaN for a constant truth.
- FRC (:func:`frc_curve`): ring correlation of the two mean-free, Tukey-windowed images;
  ``*_frc50`` / ``*_frc1over7`` is the first crossing of 1/2 and 1/7, linearly interpolated,
  as a FRACTION OF NYQUIST (ring index / (n/2)), in [0, 1]; 1 means never below threshold.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.signal.windows import tukey
from skimage.metrics import structural_similarity

log = logging.getLogger(__name__)

DEFAULT_TRIM = 2  # the reference trims offset//2 = 2 px per side (330 -> 326 at N=64)
FRC_THRESHOLDS = {"frc50": 0.5, "frc1over7": 1.0 / 7.0}
MIN_SIDE = 7  # SSIM's window


def to_numpy(x: Any) -> np.ndarray:
    """ndarray from an ndarray or a torch tensor (any device, with or without grad)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def remove_phase_plane(phase: np.ndarray) -> np.ndarray:
    """``phase`` minus its least-squares plane ``c0 y + c1 x + c2`` over all pixels."""
    h, w = phase.shape
    y, x = np.mgrid[0:h, 0:w]
    design = np.stack([y.ravel() / h, x.ravel() / w, np.ones(h * w)], axis=1)
    coef, *_ = np.linalg.lstsq(design, phase.ravel().astype(np.float64), rcond=None)
    return phase - (design @ coef).reshape(h, w)


def align(pred: np.ndarray, truth: np.ndarray, trim: int = DEFAULT_TRIM) -> dict[str, Any]:
    """Trim, scale the amplitude and level the phases (see module docstring).

    Returns
    -------
    dict with ``amp_true, amp_pred, phase_true, phase_pred`` (float64 2-D) and ``amp_scale``.
    """
    pred, truth = _check_pair(pred, truth, trim)
    if trim:
        pred, truth = pred[trim:-trim, trim:-trim], truth[trim:-trim, trim:-trim]
    kappa, rotation = _gauge(pred, truth)
    return {
        "amp_true": np.abs(truth),
        "amp_pred": np.abs(pred) * kappa,
        "phase_true": remove_phase_plane(np.angle(truth)),
        "phase_pred": remove_phase_plane(np.angle(pred * rotation)),
        "amp_scale": kappa,
    }


def _gauge(pred: np.ndarray, truth: np.ndarray) -> tuple[float, complex]:
    """(amplitude scale, unit phase factor) that best match ``pred`` to ``truth``."""
    mean_p = np.abs(pred).mean()
    kappa = float(np.abs(truth).mean() / mean_p) if mean_p > 0 else 1.0
    overlap = np.vdot(truth, pred)  # sum conj(truth) * pred
    rotation = np.exp(-1j * np.angle(overlap)) if overlap != 0 else 1.0 + 0j
    return kappa, rotation


def match_gauge(pred: Any, truth: Any) -> np.ndarray:
    """``pred`` with the unidentifiable gauge removed: scaled to the truth's mean amplitude
    and rotated by the best global phase (what :func:`align` does before its plane fit);
    for display next to the truth."""
    pred, truth = to_numpy(pred), to_numpy(truth)
    kappa, rotation = _gauge(pred, truth)
    return (pred * kappa * rotation).astype(np.complex64)


def _check_pair(pred: Any, truth: Any, trim: int) -> tuple[np.ndarray, np.ndarray]:
    pred = np.squeeze(to_numpy(pred)).astype(np.complex128)
    truth = np.squeeze(to_numpy(truth)).astype(np.complex128)
    if pred.ndim != 2 or pred.shape != truth.shape:
        raise ValueError(f"pred and truth must be 2-D images of equal shape, got {pred.shape} "
                         f"and {truth.shape}")
    if not isinstance(trim, int) or trim < 0:
        raise ValueError(f"trim must be an integer >= 0, got {trim!r}")
    if min(truth.shape) - 2 * trim < MIN_SIDE:
        raise ValueError(f"image {truth.shape} trimmed by {trim} px per side is smaller than "
                         f"SSIM's {MIN_SIDE}x{MIN_SIDE} window")
    return pred, truth


def truth_range(truth: np.ndarray) -> float:
    return float(truth.max() - truth.min())


def ssim(truth: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    return float(structural_similarity(truth, pred, data_range=data_range))


def mae(truth: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(truth - pred)))


def psnr(truth: np.ndarray, pred: np.ndarray) -> float:
    """PSNR in dB with peak ``max - min`` of the truth; inf if equal, NaN if truth constant."""
    mse = float(np.mean((truth - pred) ** 2))
    peak = truth_range(truth)
    if mse == 0:
        return float("inf")
    if peak == 0:
        return float("nan")
    return float(10.0 * np.log10(peak * peak / mse))


def frc_curve(a: np.ndarray, b: np.ndarray, taper: float = 0.25) -> np.ndarray:
    """Fourier ring correlation of two real images.

    Both are cropped to their common centred square (side n), made mean-free and multiplied
    by a separable Tukey window (``taper`` = tapered fraction) so that the image edges do
    not add a correlated cross to every ring.

    Returns
    -------
    ndarray, float64, (n // 2 + 1,)
        FRC per integer ring radius r (spatial frequency r / n cycles/px; r = n/2 is Nyquist).
        ``curve[0] = 1`` by convention; a ring where both spectra vanish counts as 1 (equal),
        where only one vanishes as 0.
    """
    n = min(a.shape + b.shape)
    a, b = (_centre_square(img, n) for img in (a, b))
    window = np.outer(tukey(n, taper), tukey(n, taper))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    k = np.fft.fftfreq(n) * n
    ring = np.rint(np.hypot(k[:, None], k[None, :])).astype(np.int64).ravel()
    n_rings = n // 2 + 1
    keep = ring < n_rings
    ring = ring[keep]
    cross = np.bincount(ring, (fa * np.conj(fb)).real.ravel()[keep], minlength=n_rings)
    pa = np.bincount(ring, (np.abs(fa) ** 2).ravel()[keep], minlength=n_rings)
    pb = np.bincount(ring, (np.abs(fb) ** 2).ravel()[keep], minlength=n_rings)
    denom = np.sqrt(pa * pb)
    curve = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)
    curve[(pa == 0) & (pb == 0)] = 1.0
    curve[0] = 1.0
    return curve


def _centre_square(img: np.ndarray, n: int) -> np.ndarray:
    y0, x0 = (img.shape[0] - n) // 2, (img.shape[1] - n) // 2
    return img[y0:y0 + n, x0:x0 + n]


def frc_crossing(curve: np.ndarray, threshold: float) -> float:
    """First ring where the FRC drops below ``threshold``, linearly interpolated, as a
    fraction of Nyquist (``ring / (len(curve) - 1)``); 1.0 if it never drops below."""
    nyquist = len(curve) - 1
    below = np.nonzero(curve[1:] < threshold)[0]
    if below.size == 0:
        return 1.0
    r = int(below[0]) + 1
    f0, f1 = curve[r - 1], curve[r]
    ring = (r - 1) + (f0 - threshold) / (f0 - f1)
    return float(ring / nyquist)


def evaluate(pred: Any, truth: Any, trim: int = DEFAULT_TRIM) -> dict[str, float]:
    """Score a stitched complex reconstruction against the ground truth.

    Parameters
    ----------
    pred, truth : complex arrays (H, W) of equal shape (numpy or torch), already stitched
    trim : int
        Pixels dropped on every side before scoring (default 2, as the reference).

    Returns
    -------
    dict of float
        ``amp_ssim, phase_ssim, amp_mae, phase_mae, amp_psnr, phase_psnr, amp_frc50,
        phase_frc50, amp_frc1over7, phase_frc1over7, amp_scale``.
    """
    al = align(pred, truth, trim)
    amp_t, amp_p = al["amp_true"], al["amp_pred"]
    ph_t, ph_p = al["phase_true"], al["phase_pred"]
    if truth_range(ph_t) < 1e-6:
        log.warning("ground-truth phase is constant: phase metrics are vacuous "
                    "(simulate with set_phi=true)")
    amp_range = truth_range(amp_t)
    out = {
        "amp_ssim": ssim(amp_t, amp_p, amp_range if amp_range > 0 else 1.0),
        "phase_ssim": ssim((ph_t + np.pi) / (2 * np.pi), (ph_p + np.pi) / (2 * np.pi), 1.0),
        "amp_mae": mae(amp_t, amp_p),
        "phase_mae": mae(ph_t, ph_p),
        "amp_psnr": psnr(amp_t, amp_p),
        "phase_psnr": psnr(ph_t, ph_p),
    }
    for part, (t, p) in (("amp", (amp_t, amp_p)), ("phase", (ph_t, ph_p))):
        curve = frc_curve(t, p)
        for name, threshold in FRC_THRESHOLDS.items():
            out[f"{part}_{name}"] = frc_crossing(curve, threshold)
    out["amp_scale"] = al["amp_scale"]
    return out


def phase_is_constant(truth: Any, tol: float = 1e-6) -> bool:
    """True when the truth's phase, after removing its plane, varies by less than ``tol`` rad
    (phase metrics would then only measure how flat the prediction is)."""
    truth = np.squeeze(to_numpy(truth))
    return truth_range(remove_phase_plane(np.angle(truth))) < tol
