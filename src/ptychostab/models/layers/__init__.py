"""Building blocks of the generators (spectral convolution, residual blocks, lift/head)."""

from .blocks import (
    LayerScale,
    LayerScaleBlock,
    PtychoBlock,
    SpectralResidualBlock,
    StablePtychoBlock,
)
from .lifting import SpatialLifter, real_imag_to_complex
from .spectral import SpectralConv2d, fit_modes

__all__ = [
    "LayerScale",
    "LayerScaleBlock",
    "PtychoBlock",
    "SpatialLifter",
    "SpectralConv2d",
    "SpectralResidualBlock",
    "StablePtychoBlock",
    "fit_modes",
    "real_imag_to_complex",
]
