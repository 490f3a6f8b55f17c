"""Residual spectral blocks: the reference ``PtychoBlock``, its normalised variant and LayerScale.

All three share one branch, ``u = GELU(Spectral(x) + Conv3x3(x))`` (exact, erf-based GELU), and
differ only in how ``u`` is added back to the residual stream:

=====================  ==========================================================
``PtychoBlock``        ``y = x + u``                       (reference ``hybrid``)
``StablePtychoBlock``  ``y = x + [lambda *] IN(u)``       (``stable_hybrid``)
``LayerScaleBlock``    ``y = x + lambda * u``, no norm     (the strategy's pivot)
=====================  ==========================================================
"""

from __future__ import annotations

import torch
from torch import nn

from .spectral import SpectralConv2d

__all__ = [
    "LayerScale",
    "LayerScaleBlock",
    "PtychoBlock",
    "SpectralResidualBlock",
    "StablePtychoBlock",
]


class LayerScale(nn.Module):
    """Learnable per-channel scale ``diag(lambda)`` (Touvron et al. 2021, CaiT).

    Parameters
    ----------
    channels : int
    init : float
        Initial value of every ``lambda_c``.
    """

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``(B, C, H, W)`` channel-wise."""
        return x * self.weight.view(1, -1, 1, 1)


class SpectralResidualBlock(nn.Module):
    """Base of the residual blocks: holds the shared branch; subclasses define the update.

    Parameters
    ----------
    channels : int
        Width of the residual stream (shape preserved: ``(B, C, H, W) -> (B, C, H, W)``).
    n_modes : int or (int, int)
        Fourier modes of the spectral branch, see :class:`SpectralConv2d`.
    corners : {1, 2}, default 2
    """

    def __init__(self, channels: int, n_modes, corners: int = 2):
        super().__init__()
        # The names `spectral` and `local_conv` are the reference's; diagnostics hook them.
        self.spectral = SpectralConv2d(channels, channels, n_modes, corners=corners)
        self.local_conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.GELU()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """``GELU(Spectral(x) + Conv3x3(x))``, the un-scaled residual update."""
        return self.act(self.spectral(x) + self.local_conv(x))

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """What the block adds to the stream; ``forward(x) == x + update(x)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.update(x)


class PtychoBlock(SpectralResidualBlock):
    """``y = x + GELU(Spectral(x) + Conv3x3(x))``: no normalisation (the reference ``hybrid``).

    GELU's output has a positive mean, so every block adds a positive offset to the stream:
    the depth-drift hypothesis that the activation diagnostics test.
    """

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


class StablePtychoBlock(SpectralResidualBlock):
    """``y = x + [lambda *] IN(GELU(Spectral(x) + Conv3x3(x)))`` with affine InstanceNorm.

    Parameters
    ----------
    channels, n_modes, corners
        As :class:`SpectralResidualBlock`.
    gamma_init : float, default 0.0
        Initial InstanceNorm weight (bias starts at 0). 0 is the strategy's spec: the block is
        exactly the identity at init. 1 with ``layerscale_init=1e-3`` is the reference's later
        variant.
    layerscale_init : float or None, default None
        If set, a per-channel :class:`LayerScale` with this init multiplies the normalised
        update.

    Notes
    -----
    The norm uses instance statistics in train and eval (no running stats), so with zero bias
    the update has zero spatial mean per (sample, channel): the block cannot shift a sample's
    per-channel DC level.
    """

    def __init__(self, channels: int, n_modes, corners: int = 2, gamma_init: float = 0.0,
                 layerscale_init: float | None = None):
        super().__init__(channels, n_modes, corners=corners)
        self.norm = nn.InstanceNorm2d(channels, affine=True)
        nn.init.constant_(self.norm.weight, gamma_init)
        nn.init.zeros_(self.norm.bias)
        self.layerscale = (None if layerscale_init is None
                           else LayerScale(channels, layerscale_init))

    def update(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm(self.branch(x))
        return u if self.layerscale is None else self.layerscale(u)


class LayerScaleBlock(SpectralResidualBlock):
    """``y = x + diag(lambda) GELU(Spectral(x) + Conv3x3(x))``, no norm (the strategy's pivot).

    Parameters
    ----------
    channels, n_modes, corners
        As :class:`SpectralResidualBlock`.
    layerscale_init : float, default 1e-2
        Initial ``lambda_c``: small, so the block starts near (not at) the identity and can
        still carry per-sample DC and scale, which a norm-last block cannot.
    """

    def __init__(self, channels: int, n_modes, corners: int = 2, layerscale_init: float = 1e-2):
        super().__init__(channels, n_modes, corners=corners)
        self.layerscale = LayerScale(channels, layerscale_init)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return self.layerscale(self.branch(x))
