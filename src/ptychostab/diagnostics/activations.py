"""Per-block activation statistics: does the residual stream drift with depth?

The strategy's hypothesis is that GELU's positive mean makes every ``PtychoBlock`` add a
positive offset, so activations drift with depth. That needs the SIGNED mean (the reference
script logged only mean ``|x|``, which cannot show it) and the mean of each block's update
``y - x``; ``stable_hybrid`` at init should show an update of exactly zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import finite_or_none
from ..models.layers import SpectralResidualBlock

__all__ = [
    "activation_report",
    "iter_blocks",
    "low_freq_ratio",
    "plot_activation_report",
    "write_json",
]

LOW_FREQ_FRACTION = 1 / 8  # |f| below this (cycles/pixel, both axes) counts as low frequency


def iter_blocks(model: nn.Module) -> list[tuple[str, SpectralResidualBlock]]:
    """Residual spectral blocks of ``model`` with their qualified names, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpectralResidualBlock)]


def low_freq_ratio(x: torch.Tensor, fraction: float = LOW_FREQ_FRACTION) -> float:
    """Share of the spectral energy of ``(..., H, W)`` maps at ``|f_y|, |f_x| < fraction``.

    In ``[0, 1]`` (Parseval: the denominator is ``sum x^2``); the DC term is included, so a
    growing mean offset pushes it towards 1. A white map gives about ``(2 fraction)^2``.
    """
    power = torch.fft.fft2(x.double()).abs().square()
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device).abs() < fraction
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device).abs() < fraction
    total = power.sum()
    return float(power[..., fy[:, None] & fx[None, :]].sum() / total) if total > 0 else math.nan


def _moments(t: torch.Tensor) -> tuple[float, float, float]:
    t = t.double()
    return float(t.mean()), float(t.std()), float(t.abs().mean())


@torch.no_grad()
def activation_report(model: nn.Module, inputs: torch.Tensor, *,
                      input_source: str = "tensor") -> dict:
    """One forward pass with hooks on every residual block; statistics per block, in depth order.

    Parameters
    ----------
    model : nn.Module
        A generator (or any module containing :class:`SpectralResidualBlock` s).
    inputs : Tensor
        Real ``(B, C, N, N)`` diffraction amplitudes, as the generator receives them.
    input_source : str
        Recorded in the summary (file path or "synthetic ...").

    Returns
    -------
    dict
        ``blocks``: one dict per block call in execution order with ``index``, ``name``,
        ``kind``, ``channels``, ``size``, and over the batch: output ``mean`` (signed),
        ``std``, ``mean_abs``; ``update_mean`` / ``update_std`` of ``y - x``;
        ``update_rel`` = std(y - x) / std(x); ``low_freq_ratio`` of the output (see
        :func:`low_freq_ratio`); ``spectral_local_ratio`` = mean |spectral branch| /
        mean |local conv branch|. ``summary``: architecture, input stats, first/last mean,
        least-squares ``mean_slope`` per block and the mean update.
    """
    blocks = iter_blocks(model)
    branch: dict[int, dict[str, float]] = {}
    records: list[dict] = []
    handles = []

    def branch_hook(key: int, part: str):
        def hook(_m, _inp, out):
            branch.setdefault(key, {})[part] = float(out.double().abs().mean())
        return hook

    def block_hook(name: str, key: int):
        def hook(block, inp, y):
            x = inp[0]
            mean, std, mean_abs = _moments(y)
            upd_mean, upd_std, _ = _moments(y - x)
            x_std = float(x.double().std())
            parts = branch.pop(key, {})
            local = parts.get("local")
            records.append({
                "index": len(records), "name": name, "kind": type(block).__name__,
                "channels": int(y.shape[1]), "size": int(y.shape[-1]),
                "mean": mean, "std": std, "mean_abs": mean_abs,
                "update_mean": upd_mean, "update_std": upd_std,
                "update_rel": upd_std / x_std if x_std > 0 else math.nan,
                "low_freq_ratio": low_freq_ratio(y),
                "spectral_local_ratio": parts.get("spectral", math.nan) / local
                if local else math.nan,
                "input_mean": float(x.double().mean()),
            })
        return hook

    for name, block in blocks:
        key = id(block)
        handles += [block.spectral.register_forward_hook(branch_hook(key, "spectral")),
                    block.local_conv.register_forward_hook(branch_hook(key, "local")),
                    block.register_forward_hook(block_hook(name, key))]
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    means = np.array([r["mean"] for r in records])
    config = getattr(model, "config", None) or {}
    summary = {
        "architecture": config.get("name", type(model).__name__),
        "config": config,
        "input_source": input_source,
        "n_samples": int(inputs.shape[0]),
        "input_shape": list(inputs.shape),
        "input_mean": float(inputs.double().mean()),
        "n_blocks": len(records),
        "mean_first": float(means[0]) if len(means) else math.nan,
        "mean_last": float(means[-1]) if len(means) else math.nan,
        "mean_slope": float(np.polyfit(np.arange(len(means)), means, 1)[0])
        if len(means) > 1 else math.nan,
        "update_mean_avg": float(np.mean([r["update_mean"] for r in records]))
        if records else math.nan,
    }
    return {"summary": summary, "blocks": records}


def write_json(report: dict, path: str | Path) -> Path:
    """Write a report as strict JSON (non-finite numbers become null)."""
    path = Path(path)
    path.write_text(json.dumps(finite_or_none(report), indent=2, allow_nan=False) + "\n")
    return path


def plot_activation_report(report: dict, path: str | Path) -> Path:
    """PNG of signed mean, mean |x| and std (stream and update) against block index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["blocks"]
    idx = [b["index"] for b in blocks]
    fig, (ax_mean, ax_std) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    ax_mean.plot(idx, [b["mean"] for b in blocks], "o-", label="mean (signed)")
    ax_mean.plot(idx, [b["mean_abs"] for b in blocks], "s--", label="mean |x|")
    ax_mean.plot(idx, [b["update_mean"] for b in blocks], "^:", label="update mean")
    ax_mean.axhline(0.0, color="0.6", lw=0.8)
    ax_std.plot(idx, [b["std"] for b in blocks], "o-", label="std")
    ax_std.plot(idx, [b["update_std"] for b in blocks], "^:", label="update std")
    for ax, title in ((ax_mean, "mean"), (ax_std, "spread")):
        ax.set_xlabel("block (execution order)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"activations: {report['summary']['architecture']}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
