"""Input lifting and the complex output projection shared by every generator."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpatialLifter", "real_imag_to_complex"]


class SpatialLifter(nn.Sequential):
    """``Conv3x3 -> GELU -> Conv3x3``: a spatially aware lift before any FFT.

    Parameters
    ----------
    in_channels : int
        ``C = gridsize**2`` diffraction channels.
    out_channels : int
        Width of the first level.

    Notes
    -----
    No activation after the second conv, as in the reference: the residual stream starts from
    a signed (not GELU-biased) map.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )


def real_imag_to_complex(z: torch.Tensor) -> torch.Tensor:
    """Read a ``(B, 2C, H, W)`` head output as ``(B, C, H, W)`` complex.

    Channel ``k = r * C + c`` holds part ``r`` (0 real, 1 imaginary) of object channel ``c``,
    the reference's layout.
    """
    real, imag = z.chunk(2, dim=1)
    return torch.complex(real, imag)
