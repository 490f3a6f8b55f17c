"""Activation diagnostics: signed statistics, drift of stacked PtychoBlocks, stable at init."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ptychostab.diagnostics import activation_report, synthetic_diffraction
from ptychostab.diagnostics.activations import low_freq_ratio
from ptychostab.models import StablePtychoBlock, build_generator

TINY = {"hidden_channels": 8, "n_modes": 4, "N": 16}


@pytest.fixture
def positive_batch():
    return synthetic_diffraction(4, 1, 16, seed=0)


def test_synthetic_input_is_positive_and_diffraction_like():
    x = synthetic_diffraction(3, 4, 32, seed=1)
    assert x.shape == (3, 4, 32, 32) and x.dtype == torch.float32
    assert x.min() > 0 and abs(x.mean().item() - 1) < 1e-4
    centre = x[..., 12:20, 12:20].mean()
    assert centre > 3 * x.mean()  # bright central peak
    torch.testing.assert_close(x, synthetic_diffraction(3, 4, 32, seed=1))


def test_stacked_ptycho_blocks_drift_positive_with_depth(positive_batch):
    """The strategy's hypothesis, on an untrained constant-resolution stack (fno family)."""
    torch.manual_seed(0)
    model = build_generator("fno", fno_blocks=6, **TINY)
    report = activation_report(model, positive_batch)
    blocks = report["blocks"]
    means = [b["mean"] for b in blocks]
    assert [b["kind"] for b in blocks] == ["PtychoBlock"] * 6
    assert all(b["update_mean"] > 0 for b in blocks)  # every block adds a positive offset
    assert np.all(np.diff(means) > 0)
    assert means[-1] - blocks[0]["input_mean"] > 0.5 * blocks[0]["std"]  # measurable drift
    assert report["summary"]["mean_slope"] > 0


def test_stable_hybrid_update_mean_is_zero_at_init(positive_batch):
    torch.manual_seed(0)
    model = build_generator("stable_hybrid", fno_blocks=4, **TINY)
    report = activation_report(model, positive_batch)
    assert report["summary"]["architecture"] == "stable_hybrid"
    assert len(report["blocks"]) == 5  # 16 px: 2 levels [2, 2] + bottleneck
    for b in report["blocks"]:
        assert abs(b["update_mean"]) < 1e-7 and b["update_std"] == 0
    assert report["summary"]["update_mean_avg"] == 0


def test_blocks_are_reported_in_execution_order(positive_batch):
    torch.manual_seed(0)
    model = build_generator("hybrid", fno_blocks=4, **TINY)
    report = activation_report(model, positive_batch)
    names = [b["name"] for b in report["blocks"]]
    assert names == ["encoder.0.0", "encoder.0.1", "encoder.1.0", "encoder.1.1", "bottleneck"]
    assert [b["size"] for b in report["blocks"]] == [16, 16, 8, 8, 8]
    assert [b["channels"] for b in report["blocks"]] == [8, 8, 16, 16, 16]
    for b in report["blocks"]:
        assert 0 <= b["low_freq_ratio"] <= 1 and b["spectral_local_ratio"] > 0


def test_statistics_are_signed():
    """A negative stream reports a negative mean: mean |x| alone cannot show drift direction."""
    identity = nn.Sequential(StablePtychoBlock(4, 3))  # zero-gamma: y == x
    x = -synthetic_diffraction(2, 4, 16)
    (b,) = activation_report(identity, x)["blocks"]
    assert b["mean"] == pytest.approx(x.double().mean().item())
    assert b["mean"] < 0 < b["mean_abs"] and b["mean_abs"] == pytest.approx(-b["mean"])
    assert b["std"] == pytest.approx(x.double().std().item())


def test_low_freq_ratio():
    n = torch.arange(32.0)
    assert low_freq_ratio(torch.ones(1, 32, 32)) == pytest.approx(1.0)
    nyquist = torch.cos(math.pi * n)[None, :, None].expand(1, 32, 32)
    assert low_freq_ratio(nyquist) == pytest.approx(0.0, abs=1e-12)
    white = torch.randn(8, 64, 64, generator=torch.Generator().manual_seed(0))
    assert low_freq_ratio(white) == pytest.approx((15 / 64) ** 2, rel=0.2)
