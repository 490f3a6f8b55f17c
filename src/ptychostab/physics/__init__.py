"""Grid-lines ptychography physics: objects, probes, the forward model and the losses.

Imports numpy, scipy, scikit-image and torch only (no Lightning, no Hydra).
"""

from ptychostab.physics.forward import far_field_amplitude, illuminate, predict_amplitude
from ptychostab.physics.losses import LOSSES, get_loss, loss_names

__all__ = ["far_field_amplitude", "illuminate", "predict_amplitude", "LOSSES", "get_loss",
           "loss_names"]
