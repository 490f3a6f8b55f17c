"""Make ``ptychostab.sweep.<name>`` the very module object of its new home."""

import importlib
import sys

from ptychostab.sweep import MOVED


def alias(old: str) -> None:
    """Replace the shim module ``old`` in ``sys.modules`` by its new home (same object)."""
    sys.modules[old] = importlib.import_module(MOVED[old.rpartition(".")[2]])
