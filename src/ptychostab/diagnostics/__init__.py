"""Diagnostics of generators: per-block activation statistics and gradient magnitudes.

Entry point: ``python -m ptychostab.cli.diagnose {activations,gradients} ...``.
"""

from .activations import activation_report, iter_blocks, plot_activation_report, write_json
from .gradients import gradient_report, plot_gradient_report
from .inputs import load_diffraction, synthetic_diffraction

__all__ = [
    "activation_report",
    "gradient_report",
    "iter_blocks",
    "load_diffraction",
    "plot_activation_report",
    "plot_gradient_report",
    "synthetic_diffraction",
    "write_json",
]
