"""Spectral convolution: per-mode complex channel mixing in Fourier space (Li et al. 2021, FNO).

Mode convention (as in the original FNO and the PtychoPINN reference): ``n_modes = m`` keeps the
``m`` lowest non-negative frequencies along the width (the ``rfft`` half-axis) and, along the
height, the ``m`` lowest non-negative frequencies (``corners=1``) or those plus the ``m`` lowest
negative ones (``corners=2``, the canonical FNO "two corners"), each corner with its own weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SpectralConv2d", "fit_modes"]


def _pair(n_modes: int | tuple[int, int]) -> tuple[int, int]:
    mh, mw = (n_modes, n_modes) if isinstance(n_modes, int) else tuple(n_modes)
    if mh < 1 or mw < 1:
        raise ValueError(f"n_modes must be >= 1 along both axes, got {n_modes!r}")
    return int(mh), int(mw)


def _corner_rows(mh: int, height: int, corners: int) -> tuple[int, int]:
    """Rows kept in the top (non-negative) and bottom (negative) corner of an ``height``-row map.

    Two corners never overlap: the bottom takes at most ``height // 2`` rows and the top the rest,
    so an odd height (and a 1-row map, which only has its DC row) gives the extra row to the top.
    """
    if corners == 1:
        return min(mh, height), 0
    bottom = min(mh, height // 2)
    return min(mh, height - bottom), bottom


def fit_modes(n_modes: int, size: int) -> tuple[int, int]:
    """Two-corner weight size ``(rows, cols)`` that a ``size x size`` map can actually use.

    Generators that know each level's resolution size the weights with this, so no weight is
    allocated that can never receive a gradient (dead weights inflate parameter norms, AGC's
    unit norms, optimizer state and the memory estimate).
    """
    top, _ = _corner_rows(n_modes, size, corners=2)
    return top, min(n_modes, size // 2 + 1)


def _mix(spec: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-mode channel mixing ``(B, in, *modes) x (in, out, *modes) -> (B, out, *modes)``."""
    return torch.einsum("bi...,io...->bo...", spec, weight)


class SpectralConv2d(nn.Module):
    """2-D spectral convolution: ``irfft2(W . rfft2(x))`` on the kept low-frequency modes.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts of the input and output maps.
    n_modes : int or (int, int)
        Modes kept per corner along (height, width). Inputs too small for them are clipped to
        what they have, at every call, so one layer runs at any resolution.
    corners : {1, 2}, default 2
        2 keeps positive and negative height frequencies (canonical FNO), weight shape
        ``(in, out, 2, mh, mw)``. 1 keeps rows ``[0, mh)`` of the rfft2 spectrum only, weight
        shape ``(in, out, mh, mw)``: the reference's fallback layer, whose recorded results and
        parameter counts came from it. Note that when ``H <= 2 mh`` those rows wrap into
        negative frequencies, and when ``H <= mh`` all rows are mixed.

    Notes
    -----
    Weights are complex64 with ``W = randn_complex / sqrt(in_channels)``, so ``Re W`` and
    ``Im W`` each have standard deviation ``1 / sqrt(2 in_channels)``. No bias (the local
    branch of the residual blocks carries one). Imaginary parts of the DC and Nyquist columns
    are discarded by ``irfft2``, as in every rfft-based FNO.
    """

    # AGC units are output channels; the weight is (in, out, [2,] mh, mw) (training.clipping).
    agc_unit_axis = {"weight": 1}

    def __init__(self, in_channels: int, out_channels: int, n_modes, corners: int = 2):
        super().__init__()
        if corners not in (1, 2):
            raise ValueError(f"corners must be 1 or 2, got {corners!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_modes = _pair(n_modes)
        self.corners = corners
        corner_dim = () if corners == 1 else (2,)
        shape = (in_channels, out_channels, *corner_dim, *self.n_modes)
        self.weight = nn.Parameter(torch.empty(shape, dtype=torch.cfloat))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W = randn_complex / sqrt(in_channels)``: Re and Im each ``N(0, 1 / (2 in))``."""
        if self.weight.is_meta:  # shapes only; sampling on meta costs a ~1 s first-use import
            return
        with torch.no_grad():
            torch.view_as_real(self.weight).normal_(0.0, 1.0 / math.sqrt(2 * self.in_channels))

    def kept_modes(self, height: int, width: int) -> tuple[int, int, int]:
        """``(top_rows, bottom_rows, cols)`` of the spectrum mixed for a ``height x width`` map."""
        top, bottom = _corner_rows(self.n_modes[0], height, self.corners)
        return top, bottom, min(self.n_modes[1], width // 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in, H, W)`` real to ``(B, out, H, W)`` real."""
        batch, _, height, width = x.shape
        top, bottom, cols = self.kept_modes(height, width)
        spec = torch.fft.rfft2(x)  # (B, in, H, W//2+1)
        w = self.weight
        if w.dtype != spec.dtype:  # float64 inputs (gradcheck, reference comparisons)
            w = w.to(spec.dtype)
        spec_top = spec[:, :, :top, :cols]
        if self.corners == 1:
            # irfft2 zero-fills rows >= top and columns >= cols: no full-size buffer needed.
            return torch.fft.irfft2(_mix(spec_top, w[..., :top, :cols]), s=(height, width))

        spec_bottom = spec[:, :, height - bottom :, :cols]
        if top == bottom:  # both corners in one contraction, batched over (corner, row, col)
            stacked = torch.stack((spec_top, spec_bottom), dim=2)
            y_top, y_bottom = _mix(stacked, w[..., :top, :cols]).unbind(2)
        else:  # odd height: the top corner holds one row more than the bottom one
            y_top = _mix(spec_top, w[:, :, 0, :top, :cols])
            y_bottom = _mix(spec_bottom, w[:, :, 1, :bottom, :cols])
        # Only the rows between the corners are materialised as zeros, and only `cols` wide;
        # irfft2 zero-fills the remaining columns itself.
        gap = y_top.new_zeros(batch, self.out_channels, height - top - bottom, cols)
        return torch.fft.irfft2(torch.cat((y_top, gap, y_bottom), dim=2), s=(height, width))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, n_modes={self.n_modes}, "
            f"corners={self.corners}"
        )
