"""Activation drift inside the study's own runs: per-block statistics on a fixed probe batch.

The strategy's hypothesis: ``y = x + GELU(...)`` adds a positive offset at every block, the
offset grows with depth and with training, and it saturates the latent statistics before the
gradients explode. :class:`DriftProbe` measures exactly that, once per epoch and at
initialisation (epoch ``-1``), in every run:

- one forward pass, without gradient and in eval mode, of :data:`PROBE_SIZE` validation
  patterns chosen by :func:`probe_indices` from the dataset's shape alone (so every arm and seed
  of one dataset sees the same patterns; no random state is read or advanced);
- hooks on every :class:`~ptychostab.models.layers.SpectralResidualBlock` of the *uncompiled*
  generator record, per block, the signed mean, mean ``|x|`` and std of its output ``y`` and of
  its update ``y - x``, and the fraction of GELU inputs below :data:`SATURATION_THRESHOLD`;
- all statistics are reduced on the device and copied to the host once per probe (one
  synchronisation per epoch, none inside training steps).

The rows are kept in ``activations.csv`` (:data:`ACTIVATION_COLUMNS`), rewritten atomically like
``history.csv``. :class:`ActivationLog` owns that file for one run: it is reset when the run
restarts from scratch, and on resume it keeps only the rows of the epochs the checkpoint has
completed, so a kill between the file and the checkpoint never duplicates or loses an epoch.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runs.records import ACTIVATIONS, write_csv
from .activations import iter_blocks

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_COLUMNS",
    "PROBE_SIZE",
    "SATURATION_THRESHOLD",
    "ActivationLog",
    "DriftProbe",
    "probe_indices",
    "read_activations",
    "write_activations",
]

PROBE_SIZE = 16
SATURATION_THRESHOLD = -3.0  # GELU(x) for x < -3 is within 0.4% of 0: a dead unit
INIT_EPOCH = -1

log = logging.getLogger(__name__)

#: Statistic columns, in the order of the device-side reduction in :meth:`DriftProbe.measure`.
STAT_COLUMNS = (
    "out_mean",  # signed mean of the block's output y
    "out_abs_mean",  # mean |y|
    "out_std",  # std of y
    "update_mean",  # signed mean of the update y - x (the residual branch's contribution)
    "update_abs_mean",  # mean |y - x|
    "update_std",  # std of y - x
    "gelu_saturated",  # fraction of the GELU's inputs below SATURATION_THRESHOLD
)
ACTIVATION_COLUMNS = ("epoch", "block", "name", "level", "resolution", "channels", *STAT_COLUMNS)


def probe_indices(n_patterns: int, size: int = PROBE_SIZE) -> np.ndarray:
    """Indices of the probe batch: ``size`` validation patterns evenly spaced over all of them.

    Depends on the number of validation patterns only, which the data config fixes: the same
    batch for every arm and seed of one dataset, and no random number generator is touched.

    Parameters
    ----------
    n_patterns : int
        Validation patterns available (``n_test``).
    size : int, default PROBE_SIZE

    Returns
    -------
    ndarray of int64, shape (min(size, n_patterns),)
        Strictly increasing indices in ``[0, n_patterns)``.
    """
    if n_patterns < 1:
        raise ValueError(f"the probe needs validation patterns, got n_patterns={n_patterns}")
    k = min(int(size), int(n_patterns))
    return np.unique(np.linspace(0, n_patterns - 1, k).round().astype(np.int64))


class DriftProbe:
    """Per-block activation statistics of ``generator`` on one fixed batch.

    Parameters
    ----------
    generator : nn.Module
        The uncompiled generator (hooks on a ``torch.compile`` wrapper would not fire).
    batch : Tensor, shape (B, C, N, N)
        The probe batch, on the generator's device (see :func:`probe_indices`).
    """

    def __init__(self, generator: nn.Module, batch: torch.Tensor):
        self.generator = generator
        self.batch = batch
        self.blocks = iter_blocks(generator)
        self.full_resolution = int(batch.shape[-1])

    @torch.no_grad()
    def measure(self, epoch: int) -> list[dict]:
        """One forward pass; one row per block call, in execution order.

        Returns
        -------
        list of dict
            Keys :data:`ACTIVATION_COLUMNS`. ``level`` is ``log2(N / resolution)`` (0 = full
            resolution; the bottleneck shares the coarsest level), ``block`` the call index.
        """
        stats: list[torch.Tensor] = []
        meta: list[tuple[str, int, int]] = []
        gelu_in: dict[int, torch.Tensor] = {}
        handles = []

        def act_hook(key: int):
            def hook(_module, inputs):
                u = inputs[0]
                gelu_in[key] = (u < SATURATION_THRESHOLD).double().mean()
            return hook

        def block_hook(name: str, key: int):
            def hook(_block, inputs, y):
                x = inputs[0].double()
                yd = y.double()
                upd = yd - x
                sat = gelu_in.pop(key, None)
                stats.append(torch.stack((
                    yd.mean(), yd.abs().mean(), yd.std(), upd.mean(), upd.abs().mean(),
                    upd.std(),
                    sat if sat is not None else torch.full((), math.nan, dtype=torch.float64,
                                                           device=y.device))))
                meta.append((name, int(y.shape[-1]), int(y.shape[1])))
            return hook

        for name, block in self.blocks:
            key = id(block)
            handles.append(block.act.register_forward_pre_hook(act_hook(key)))
            handles.append(block.register_forward_hook(block_hook(name, key)))
        was_training = self.generator.training
        self.generator.eval()
        try:
            self.generator(self.batch)
        finally:
            self.generator.train(was_training)
            for h in handles:
                h.remove()
        if not stats:
            return []
        values = torch.stack(stats).cpu().numpy()  # the probe's one device-to-host copy
        rows = []
        for i, ((name, res, ch), vals) in enumerate(zip(meta, values, strict=True)):
            level = int(round(math.log2(self.full_resolution / res))) if res > 0 else 0
            rows.append({"epoch": int(epoch), "block": i, "name": name, "level": level,
                         "resolution": res, "channels": ch,
                         **{k: float(v) for k, v in zip(STAT_COLUMNS, vals, strict=True)}})
        return rows


def write_activations(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite the whole ``activations.csv`` atomically (a few hundred rows), as history."""
    write_csv(path, rows, ACTIVATION_COLUMNS)


def read_activations(path: str | os.PathLike) -> list[dict]:
    """Rows of an ``activations.csv`` (numbers as int/float, empty cells NaN); ``[]`` if absent.

    Damaged rows (a truncated last line) are skipped.
    """
    path = Path(path)
    if not path.exists():
        return []
    ints = ("epoch", "block", "level", "resolution", "channels")
    out = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for raw in csv.DictReader(fh):
                try:
                    row = {k: raw["name"] if k == "name" else int(raw[k]) if k in ints
                           else float(raw[k]) if raw[k] not in ("", None) else math.nan
                           for k in ACTIVATION_COLUMNS}
                except (KeyError, TypeError, ValueError):
                    continue
                out.append(row)
    except (OSError, UnicodeDecodeError, csv.Error):
        return out
    return out


@dataclass
class ActivationLog:
    """The ``activations.csv`` of one run: when to probe, what to keep on resume and restart.

    Parameters
    ----------
    path : Path
        ``<run_dir>/activations.csv``.
    every_n_epochs : int
        Probe after every k-th epoch (and at initialisation); 0 turns the probe off (no file).
    probe : DriftProbe or None
        Set by :meth:`attach` once the generator and the data exist.
    """

    path: Path
    every_n_epochs: int = 1
    probe: DriftProbe | None = None
    rows: list[dict] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.every_n_epochs > 0

    def attach(self, generator: nn.Module, val_data: torch.Tensor, device: torch.device) -> None:
        """Build the probe batch from the validation patterns (a copy on ``device``)."""
        if not self.enabled:
            return
        idx = torch.as_tensor(probe_indices(int(val_data.shape[0])))
        batch = val_data.index_select(0, idx.to(val_data.device)).to(device).clone()
        self.probe = DriftProbe(generator, batch)

    def start(self, completed_epochs: int, weights_at_epoch_end: bool = False,
              initial_weights: bool | None = None) -> None:
        """A fresh run probes the initial weights as epoch -1; a resumed one keeps the rows of
        epochs ``< completed_epochs`` only (rows already kept are never measured again).

        Parameters
        ----------
        completed_epochs : int
            Epochs the generator's weights have completed (the checkpoint's ``epoch``).
        weights_at_epoch_end : bool
            The generator holds the weights of the end of epoch ``completed_epochs - 1`` (a
            resume from an epoch-end checkpoint); if that epoch was due and its rows are
            missing (killed between the checkpoint and this file), they are measured now: the
            same weights and batch give the same rows.
        initial_weights : bool, optional
            The generator holds its initialisation (a fresh start, or a resume before the
            first step): only then are missing epoch -1 rows measured. None: assumed when
            ``completed_epochs == 0`` (a caller that cannot tell a fresh start from a resume
            inside epoch 0; pass False there, or the rows of partly trained weights would be
            labelled epoch -1).
        """
        if not self.enabled:
            return
        kept = [r for r in read_activations(self.path) if r["epoch"] < completed_epochs]
        self.rows = kept
        initial = completed_epochs == 0 and (initial_weights is None or bool(initial_weights))
        if not any(r["epoch"] == INIT_EPOCH for r in kept):
            if initial:
                self.rows = self._measure(INIT_EPOCH)
            else:  # the initial weights are gone: a gap, never rows of other weights
                log.warning("%s has no epoch -1 rows and the initial weights are gone: the "
                            "initialisation stays unmeasured", self.path)
        last = completed_epochs - 1
        if (weights_at_epoch_end and last >= 0 and (last + 1) % self.every_n_epochs == 0
                and not any(r["epoch"] == last for r in self.rows)):
            self.rows = self.rows + self._measure(last)
        write_activations(self.path, self.rows)

    def epoch_end(self, epoch: int) -> None:
        """After epoch ``epoch`` (0-based) completed: probe if it is due; rewrite the file.
        Call it before the epoch's ``last.ckpt`` is written (see the module docstring)."""
        if not self.enabled or (epoch + 1) % self.every_n_epochs:
            return
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + self._measure(epoch)
        write_activations(self.path, self.rows)

    def reset(self) -> None:
        """The run restarts from its beginning: forget every row and remove the file."""
        self.rows = []
        self.path.unlink(missing_ok=True)

    def _measure(self, epoch: int) -> list[dict]:
        if self.probe is None:
            raise RuntimeError("ActivationLog.attach() must be called before probing")
        return self.probe.measure(epoch)
