"""The per-run files the report's plots draw from, read once by the aggregation.

- ``history.csv`` of every run with a folder (the val-loss and grad-norm curves);
- ``recon.npz`` (keys ``pred``, ``truth``: complex 2-D arrays) of each arm's median ok run by
  the rule's metric (:func:`median_run`), when it has one: an optional artefact, skipped when
  absent or damaged.

The plots (:mod:`ptychostab.report.plots`) receive a :class:`PlotInputs` and read no file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ptychostab.analysis.collect import load_history
from ptychostab.runs import records


@dataclass(frozen=True)
class Recon:
    """One run's reconstruction beside the ground truth."""

    seed: object
    pred: np.ndarray
    truth: np.ndarray


@dataclass
class PlotInputs:
    #: run folder (the runs table's ``_path``) -> its history rows (empty when unreadable)
    histories: dict[str, list[dict]] = field(default_factory=dict)
    #: (sweep, arm_id) -> the reconstruction of the arm's median ok run
    recon: dict[tuple[str, str], Recon] = field(default_factory=dict)

    def history_of(self, run_path) -> list[dict]:
        """The history rows of a run folder (``[]`` for a run without one)."""
        return self.histories.get(run_path, []) if isinstance(run_path, str) else []


def median_run(g: pd.DataFrame, metric: str) -> pd.Series | None:
    """The ok run whose ``metric`` is the median (the lower middle for an even count)."""
    ok = g[(g["status"] == records.OK) & np.isfinite(g[metric].to_numpy(dtype=float))] \
        if metric in g else g.iloc[0:0]
    if ok.empty:
        return None
    ordered = ok.sort_values([metric, "seed"], kind="stable")
    return ordered.iloc[(len(ordered) - 1) // 2]


def load_recon(run_path: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(pred, truth) complex 2-D arrays from ``recon.npz``; None when absent or unreadable."""
    if not isinstance(run_path, str) or not (Path(run_path) / records.RECON).exists():
        return None
    try:
        with np.load(Path(run_path) / records.RECON, allow_pickle=False) as z:
            pred, truth = np.asarray(z["pred"]), np.asarray(z["truth"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # an optional artefact: damaged means skipped, never a crash
    return (pred, truth) if pred.ndim == 2 and truth.ndim == 2 else None


def load_plot_inputs(runs: pd.DataFrame, summary: pd.DataFrame, metric: str) -> PlotInputs:
    """Every run's history and each arm's median-run reconstruction (see the module
    docstring); ``runs`` needs ``_path``, ``sweep``, ``arm_id``, ``status``, ``seed``."""
    out = PlotInputs()
    if runs.empty:
        return out
    for path in runs["_path"]:
        if isinstance(path, str) and path not in out.histories:
            out.histories[path] = load_history(path)
    for sweep, arm_id in summary[["sweep", "arm_id"]].itertuples(index=False, name=None):
        key = (str(sweep), str(arm_id))
        if key in out.recon:
            continue
        run = median_run(runs[(runs["sweep"] == sweep) & (runs["arm_id"] == arm_id)], metric)
        rec = load_recon(run["_path"]) if run is not None else None
        if rec is not None:
            out.recon[key] = Recon(run["seed"], *rec)
    return out
