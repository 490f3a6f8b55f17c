"""Experiment trackers for one run: CSV, TensorBoard, MLflow, Weights & Biases.

Built on Lightning's logger classes but driven by the run's recorder, not by a Trainer (a
packed process holds one tracker set per seed). See :mod:`ptychostab.tracking.trackers`.
"""

from .trackers import (
    EXTRA,
    LOGGER_NAMES,
    MissingTracker,
    RunIdentity,
    TrackerSet,
    check_available,
    flatten,
)

__all__ = ["EXTRA", "LOGGER_NAMES", "MissingTracker", "RunIdentity", "TrackerSet",
           "check_available", "flatten"]
