"""Atomic training checkpoints (``last.ckpt``, ``best.ckpt``) in our own format.

A checkpoint is ``torch.save`` of a plain dict: ``format``, ``reason`` (``epoch_end`` /
``preempted``), ``training`` (the module's :meth:`~PtychoModule.training_state`: weights,
optimizer, scheduler, monitor, position, history, best), ``rng`` (python, numpy, torch CPU and
CUDA states), ``wall_s`` (cumulative job seconds at save time), ``config_hash``.
``best.ckpt`` holds ``generator`` weights, ``epoch`` and ``val_loss`` only.

Written to a temporary file in the same folder, fsynced, then ``os.replace``d: a job killed
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["FORMAT", "atomic_torch_save", "load_checkpoint", "rng_state", "set_rng_state"]

FORMAT = "ptychostab.ckpt/1"


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of our checkpoints onto the CPU.

    ``weights_only=False``: the file holds RNG states (numpy arrays, Python tuples) and was
    written by this job in its own run folder.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    return ckpt


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
