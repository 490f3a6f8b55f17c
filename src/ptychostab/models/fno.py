"""Cascaded FNO: constant-resolution stack of PtychoBlocks (the reference's "Arch A").

A second family where depth is plain block count at full resolution: the cleanest setting for
the residual-stream drift question, with no resampling between blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import PtychoBlock, SpatialLifter, fit_modes, real_imag_to_complex

__all__ = ["CascadedFNO"]


class CascadedFNO(nn.Module):
    """Lifter, ``fno_blocks`` PtychoBlocks, conv refiner, complex head.

    Parameters
    ----------
    in_channels : int
        ``C = gridsize**2``; also the number of complex output channels.
    hidden_channels : int
        Width of every block.
    n_modes : int
        Fourier modes per block.
    fno_blocks : int
        Number of residual spectral blocks.
    N : int
        Input side; sizes the spectral weights when ``corners=2``.
    corners : {1, 2}, default 2
        See :class:`~ptychostab.models.layers.SpectralConv2d`; 1 reproduces the reference.
    fno_cnn_blocks : int, default 2
        ``Conv3x3 + GELU`` layers in the refiner.
    """

    def __init__(self, in_channels: int, hidden_channels: int, n_modes: int, fno_blocks: int,
                 N: int, corners: int = 2, fno_cnn_blocks: int = 2):
        super().__init__()
        self.in_channels = in_channels
        self.N = N
        self.channels = [hidden_channels]
        self.blocks_per_level = [fno_blocks]
        modes = n_modes if corners == 1 else fit_modes(n_modes, N)

        ## Lift: C diffraction channels -> hidden_channels
        self.lifter = SpatialLifter(in_channels, hidden_channels)

        ## Spectral blocks, all at full resolution
        self.blocks = nn.Sequential(
            *(PtychoBlock(hidden_channels, modes, corners=corners) for _ in range(fno_blocks))
        )

        ## Refiner: 1x1 mix, then local 3x3 convs (fix fine detail the truncated spectrum lost)
        refiner = [nn.Conv2d(hidden_channels, hidden_channels, kernel_size=1)]
        for _ in range(fno_cnn_blocks):
            refiner += [nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.GELU()]
        self.refiner = nn.Sequential(*refiner)

        ## Head: 1x1 conv to (real, imag) per channel; AGC excludes it by this name
        self.head = nn.Conv2d(hidden_channels, 2 * in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct the object patch.

        1. lift ``(B, C, N, N)`` to ``(B, hidden, N, N)``;
        2. run the ``fno_blocks`` residual spectral blocks;
        3. refine with a 1x1 conv and ``fno_cnn_blocks`` x (3x3 conv, GELU);
        4. project with ``head`` to ``(B, 2C, N, N)`` and read it as complex ``(B, C, N, N)``.
        """
        x = self.blocks(self.lifter(x))
        return real_imag_to_complex(self.head(self.refiner(x)))
