"""Stitching and reconstruction metrics (numpy, scipy, scikit-image; no torch required)."""

from ptychostab.evaluation.metrics import evaluate, phase_is_constant
from ptychostab.evaluation.reconstruction import evaluate_patches

__all__ = ["evaluate", "evaluate_patches", "phase_is_constant"]
