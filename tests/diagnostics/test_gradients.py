"""Gradient diagnostics: per-block spectral vs local gradients, gamma / lambda reach."""

import math

import torch

from ptychostab.diagnostics import gradient_report, synthetic_diffraction
from ptychostab.models import build_generator

TINY = {"hidden_channels": 8, "n_modes": 4, "N": 16}


def test_hybrid_blocks_get_spectral_and_local_gradients():
    torch.manual_seed(0)
    model = build_generator("hybrid", fno_blocks=2, **TINY)
    report = gradient_report(model, synthetic_diffraction(2, 1, 16))
    assert len(report["blocks"]) == 3
    for b in report["blocks"]:
        assert b["spectral_grad_mean"] > 0 and b["local_grad_mean"] > 0
        assert math.isfinite(b["spectral_local_ratio"])
    assert report["summary"]["total_grad_norm"] > 0 and report["summary"]["head_grad_norm"] > 0
    assert all(p.grad is None for p in model.parameters())  # left clean


def test_stable_hybrid_at_init_gradient_reaches_gamma_only():
    torch.manual_seed(0)
    model = build_generator("stable_hybrid", fno_blocks=2, **TINY)
    report = gradient_report(model, synthetic_diffraction(2, 1, 16))
    for b in report["blocks"]:
        assert b["gamma_grad_norm"] > 0
        assert b["spectral_grad_norm"] == 0 and b["local_grad_norm"] == 0  # zero-gamma blocks


def test_custom_loss_and_lambda():
    torch.manual_seed(0)
    model = build_generator("layerscale_hybrid", fno_blocks=2, **TINY)

    def energy(out, inputs):
        return (out.abs() ** 2).mean()

    report = gradient_report(model, synthetic_diffraction(2, 1, 16), loss_fn=energy)
    assert report["summary"]["loss_fn"] == "energy"
    assert all(b["lambda_grad_norm"] > 0 for b in report["blocks"])
