"""Per-block gradient magnitudes of the spectral and local branches for one batch.

The reference changed its spectral init because the spectral path "was starved of gradient";
this measures that balance per block (and, for the normalised/LayerScale blocks, whether the
gradient reaches gamma and lambda).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .activations import iter_blocks

__all__ = ["gradient_report", "plot_gradient_report"]


def _mag(p: torch.Tensor | None) -> tuple[float, float]:
    """``(mean |g|, ||g||_2)``; complex entries by modulus."""
    if p is None:
        return math.nan, math.nan
    a = p.detach().abs().double()
    return float(a.mean()), float(a.square().sum().sqrt())


def gradient_report(model: nn.Module, inputs: torch.Tensor,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                    ) -> dict:
    """Backpropagate one batch and report per-block gradient magnitudes.

    Parameters
    ----------
    model : nn.Module
        A generator.
    inputs : Tensor
        Real ``(B, C, N, N)`` batch.
    loss_fn : callable, optional
        ``loss_fn(output, inputs) -> scalar``; default ``mean |output|`` (the reference
        script's choice: needs no target).

    Returns
    -------
    dict
        ``blocks``: per block (module order) ``spectral_grad_mean`` / ``_norm`` (the complex
        spectral weight, by modulus), ``local_grad_mean`` / ``_norm`` (the 3x3 conv weight),
        ``spectral_local_ratio`` of the means, the weights' norms, and ``gamma_grad_norm`` /
        ``lambda_grad_norm`` where the block has a norm / LayerScale. ``summary``: loss,
        total and head gradient norms. Means run over the whole weight, so a ``corners=1``
        weight with modes a small map cannot use is diluted by its zero-gradient entries;
        norms are unaffected. Gradients are cleared afterwards.
    """
    model.zero_grad(set_to_none=True)
    out = model(inputs)
    loss = out.abs().mean() if loss_fn is None else loss_fn(out, inputs)
    loss.backward()

    records = []
    for index, (name, block) in enumerate(iter_blocks(model)):
        s_mean, s_norm = _mag(block.spectral.weight.grad)
        l_mean, l_norm = _mag(block.local_conv.weight.grad)
        rec = {
            "index": index, "name": name, "kind": type(block).__name__,
            "spectral_grad_mean": s_mean, "spectral_grad_norm": s_norm,
            "local_grad_mean": l_mean, "local_grad_norm": l_norm,
            "spectral_local_ratio": s_mean / l_mean if l_mean > 0 else math.nan,
            "spectral_weight_norm": _mag(block.spectral.weight)[1],
            "local_weight_norm": _mag(block.local_conv.weight)[1],
        }
        norm = getattr(block, "norm", None)
        if norm is not None:
            rec["gamma_grad_norm"] = _mag(norm.weight.grad)[1]
        scale = getattr(block, "layerscale", None)
        if scale is not None:
            rec["lambda_grad_norm"] = _mag(scale.weight.grad)[1]
        records.append(rec)

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    head = getattr(model, "head", None)
    config = getattr(model, "config", None) or {}
    summary = {
        "architecture": config.get("name", type(model).__name__),
        "config": config,
        "n_samples": int(inputs.shape[0]),
        "loss": float(loss.detach()),
        "loss_fn": "mean|output|" if loss_fn is None else getattr(loss_fn, "__name__", "custom"),
        "total_grad_norm": float(sum(g.abs().double().square().sum() for g in grads) ** 0.5),
        "head_grad_norm": _mag(head.weight.grad)[1] if head is not None else math.nan,
        "n_blocks": len(records),
    }
    model.zero_grad(set_to_none=True)
    return {"summary": summary, "blocks": records}


def plot_gradient_report(report: dict, path: str | Path) -> Path:
    """PNG of spectral vs local mean |grad| per block (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["blocks"]
    idx = [b["index"] for b in blocks]
    fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    spectral = [b["spectral_grad_mean"] for b in blocks]
    local = [b["local_grad_mean"] for b in blocks]
    ax.plot(idx, spectral, "o-", label="spectral weight")
    ax.plot(idx, local, "s--", label="local 3x3 weight")
    if all(v > 0 for v in spectral + local):  # stable_hybrid at init has exactly zero branch grads
        ax.set_yscale("log")
    ax.set_xlabel("block (module order)")
    ax.set_ylabel("mean |grad|")
    ax.set_title(f"gradients: {report['summary']['architecture']}, "
                 f"loss {report['summary']['loss_fn']}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
