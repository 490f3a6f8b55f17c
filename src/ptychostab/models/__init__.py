"""Generators: diffraction amplitudes ``(B, C, N, N)`` -> complex object patches ``(B, C, N, N)``.

``layers/`` holds the building blocks (spectral convolution, residual blocks, lift/head); the
generator families live in :mod:`.hybrid` and :mod:`.fno`; :func:`build_generator` is the one
entry point the training code uses. Imports no Lightning or Hydra.
"""

from .describe import describe
from .fno import CascadedFNO
from .hybrid import HybridUNO, default_max_levels, plan_levels
from .layers import (
    LayerScale,
    LayerScaleBlock,
    PtychoBlock,
    SpectralConv2d,
    SpectralResidualBlock,
    StablePtychoBlock,
)
from .registry import KNOB_DEFAULTS, build_generator, generator_names, register_generator

__all__ = [
    "KNOB_DEFAULTS",
    "CascadedFNO",
    "HybridUNO",
    "LayerScale",
    "LayerScaleBlock",
    "PtychoBlock",
    "SpectralConv2d",
    "SpectralResidualBlock",
    "StablePtychoBlock",
    "build_generator",
    "default_max_levels",
    "describe",
    "generator_names",
    "plan_levels",
    "register_generator",
]
