"""Hybrid U-NO: spectral encoder, convolutional decoder with skips (the reference's "Arch B").

Depth is decoupled from the number of resolution levels. ``fno_blocks`` spectral blocks are
spread over ``L`` levels (at most ``max_levels``, by default as many as keep the coarsest map at
least 8 x 8), so depth 6 and 8 at N=64 add blocks per level instead of levels. In the reference,
depth *was* the level count: 8 levels cannot exist at N=64 and 6 cost 276M parameters; the
explicit ``levels`` setting reproduces that schedule (one block per level) for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .layers import SpatialLifter, fit_modes, real_imag_to_complex

__all__ = [
    "HybridUNO",
    "channel_schedule",
    "default_max_levels",
    "max_possible_levels",
    "plan_levels",
]

MIN_COARSEST = 8  # default coarsest map side: enough room for a few Fourier modes


def _levels_fit(N: int, levels: int) -> bool:
    """Whether ``levels - 1`` exact stride-2 downsamplings of an ``N x N`` map exist."""
    return levels >= 1 and N % (1 << (levels - 1)) == 0


def default_max_levels(N: int) -> int:
    """Most levels whose coarsest map is still >= 8 x 8 (4 at N=64, 3 at 32, 5 at 128)."""
    levels = 1
    while _levels_fit(N, levels + 1) and N >> levels >= MIN_COARSEST:
        levels += 1
    return levels


def max_possible_levels(N: int) -> int:
    """Most levels geometrically possible (coarsest map 1 x 1 when N is a power of two)."""
    levels = 1
    while _levels_fit(N, levels + 1):
        levels += 1
    return levels


def plan_levels(N: int, fno_blocks: int, max_levels: int | None = None,
                levels: int | None = None) -> list[int]:
    """Blocks per level, finest first.

    Parameters
    ----------
    N : int
        Input side.
    fno_blocks : int
        Spectral blocks in the encoder (the bottleneck block comes on top).
    max_levels : int or None
        Upper bound on the level count; ``None`` -> :func:`default_max_levels`. A bound the
        geometry cannot honour is an error only when the depth actually reaches it.
    levels : int or None
        Reference depth-as-levels: exactly this many levels, one block each; then
        ``fno_blocks`` must equal ``levels`` and ``max_levels`` must be unset.

    Returns
    -------
    list of int
        ``L = min(max_levels, fno_blocks)`` counts summing to ``fno_blocks``, as even as
        possible, with the extra blocks on the finest levels: there a block costs few
        parameters (channels are narrow), while a block at the coarsest level costs up to
        64x more at 4 levels (widths double per level; weights are quadratic in width).

    Raises
    ------
    ValueError
        Naming the field, for impossible geometry or inconsistent settings.
    """
    if levels is not None:
        if max_levels is not None:
            raise ValueError(f"levels={levels} and max_levels={max_levels} are exclusive: "
                             "levels fixes the level count, max_levels bounds it")
        if not _levels_fit(N, levels):
            raise ValueError(f"levels={levels} is impossible at N={N}: {levels - 1} stride-2 "
                             f"downsamplings need N divisible by {1 << max(levels - 1, 0)} "
                             f"(at most {max_possible_levels(N)} levels)")
        if fno_blocks != levels:
            raise ValueError(f"levels={levels} means one block per level (reference "
                             f"depth-as-levels), so fno_blocks must equal it; got "
                             f"fno_blocks={fno_blocks}")
        return [1] * levels
    n_levels = min(default_max_levels(N) if max_levels is None else max_levels, fno_blocks)
    if not _levels_fit(N, n_levels):  # only a user-set bound can get here
        raise ValueError(f"max_levels={max_levels} with fno_blocks={fno_blocks} asks for "
                         f"{n_levels} levels, impossible at N={N} "
                         f"(at most {max_possible_levels(N)} levels)")
    base, extra = divmod(fno_blocks, n_levels)
    return [base + (i < extra) for i in range(n_levels)]


def channel_schedule(hidden_channels: int, n_levels: int,
                     max_hidden_channels: int | None = None) -> list[int]:
    """Encoder widths: doubling per level from ``hidden_channels``, capped if asked."""
    widths = [hidden_channels]
    for _ in range(n_levels - 1):
        nxt = 2 * widths[-1]
        widths.append(nxt if max_hidden_channels is None else min(nxt, max_hidden_channels))
    return widths


class _DecoderStage(nn.Module):
    """Upsample, concatenate the skip, ``Conv3x3 -> GELU -> Conv3x3`` (purely convolutional)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(
            nn.Conv2d(2 * out_channels, out_channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat((self.up(x), skip), dim=1))


class HybridUNO(nn.Module):
    """Hybrid U-NO generator: real ``(B, C, N, N)`` diffraction -> complex ``(B, C, N, N)`` object.

    Parameters
    ----------
    in_channels : int
        ``C = gridsize**2``; also the number of complex output channels.
    hidden_channels : int
        Width of the finest level; doubled per level.
    n_modes : int
        Fourier modes of the encoder blocks; the bottleneck block uses ``n_modes // 2``.
    blocks_per_level : sequence of int
        Residual blocks at each level, finest first (see :func:`plan_levels`).
    block : callable
        ``block(channels, n_modes) -> nn.Module``, shape-preserving residual block (the only
        thing that differs between ``hybrid``, ``stable_hybrid`` and ``layerscale_hybrid``).
    N : int
        Input side; sizes each level's spectral weights.
    corners : {1, 2}, default 2
        Spectral corners. With 2, weights are sized to the modes each level's map has
        (:func:`fit_modes`); with 1, every block allocates the full ``n_modes x n_modes``
        weight as the reference did, so its parameter counts are reproduced.
    max_hidden_channels : int or None
        Cap on the doubled widths.

    Attributes
    ----------
    channels : list of int
        Encoder width per level (checked against the built modules by the tests).
    blocks_per_level : list of int
    """

    def __init__(self, in_channels: int, hidden_channels: int, n_modes: int,
                 blocks_per_level: Sequence[int], block: Callable[[int, object], nn.Module],
                 N: int, corners: int = 2, max_hidden_channels: int | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.N = N
        self.blocks_per_level = list(blocks_per_level)
        self.channels = channel_schedule(hidden_channels, len(self.blocks_per_level),
                                         max_hidden_channels)
        sizes = [N >> i for i in range(len(self.channels))]

        def modes(m: int, size: int):
            return m if corners == 1 else fit_modes(m, size)

        ## Lift: C diffraction channels -> hidden_channels, full resolution
        self.lifter = SpatialLifter(in_channels, hidden_channels)

        ## Encoder: residual blocks per level, stride-2 conv to the next (wider) level
        self.encoder = nn.ModuleList(
            nn.Sequential(*(block(c, modes(n_modes, s)) for _ in range(n)))
            for c, s, n in zip(self.channels, sizes, self.blocks_per_level, strict=True)
        )
        self.down = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=2, stride=2)
            for c_in, c_out in zip(self.channels[:-1], self.channels[1:], strict=True)
        )

        ## Bottleneck: one more block at the coarsest level, with half the modes
        self.bottleneck = block(self.channels[-1], modes(n_modes // 2, sizes[-1]))

        ## Decoder: coarse to fine, transposed-conv upsampling and skip concatenation
        self.decoder = nn.ModuleList(
            _DecoderStage(self.channels[j + 1], self.channels[j])
            for j in reversed(range(len(self.channels) - 1))
        )

        ## Head: 1x1 conv to (real, imag) per channel; AGC excludes it by this name
        self.head = nn.Conv2d(hidden_channels, 2 * in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct the object patch.

        1. lift ``(B, C, N, N)`` to ``(B, c_0, N, N)``;
        2. encode: at level ``i`` run its blocks, keep the output as skip ``i``, downsample to
           ``(B, c_{i+1}, N / 2^{i+1}, ...)`` (no skip after the coarsest level);
        3. bottleneck block at the coarsest level;
        4. decode: upsample, concatenate skip ``j``, two 3x3 convs, from coarse to fine;
        5. project with ``head`` to ``(B, 2C, N, N)`` and read it as complex ``(B, C, N, N)``.
        """
        x = self.lifter(x)
        skips = []
        for i, level in enumerate(self.encoder):
            x = level(x)
            if i < len(self.down):
                skips.append(x)
                x = self.down[i](x)
        x = self.bottleneck(x)
        for stage, skip in zip(self.decoder, reversed(skips), strict=True):
            x = stage(x, skip)
        return real_imag_to_complex(self.head(x))
