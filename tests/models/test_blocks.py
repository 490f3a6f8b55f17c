"""Residual blocks: formulas, identity at init, zero-mean update, gradient reach."""

import pytest
import torch
import torch.nn.functional as F

from ptychostab.models.layers import LayerScaleBlock, PtychoBlock, StablePtychoBlock

C, MODES = 4, 3


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, C, 8, 8) + 0.5


def test_ptycho_block_formula_uses_exact_gelu(x):
    block = PtychoBlock(C, MODES)
    z = block.spectral(x) + block.local_conv(x)
    torch.testing.assert_close(block(x), x + 0.5 * z * (1 + torch.erf(z / 2**0.5)))
    assert not torch.allclose(block(x), x + F.gelu(z, approximate="tanh"), atol=1e-7)


@pytest.mark.parametrize("layerscale_init", [None, 1e-3])
def test_stable_block_is_exact_identity_at_init(x, layerscale_init):
    block = StablePtychoBlock(C, MODES, layerscale_init=layerscale_init)
    assert torch.allclose(block(x), x, atol=1e-6, rtol=0)


def test_stable_block_update_has_zero_spatial_mean_when_gamma_is_one(x):
    block = StablePtychoBlock(C, MODES, gamma_init=1.0)
    update = block(x) - x
    assert update.abs().max() > 0.1  # not the identity any more
    torch.testing.assert_close(update.mean(dim=(-2, -1)), torch.zeros(2, C), atol=1e-5, rtol=0)


def test_reference_v2_variant(x):
    """gamma 1 + LayerScale 1e-3: near (not at) identity, zero-mean update."""
    block = StablePtychoBlock(C, MODES, gamma_init=1.0, layerscale_init=1e-3)
    update = block(x) - x
    assert 1e-6 < update.abs().max() < 1e-2
    torch.testing.assert_close(update.mean(dim=(-2, -1)), torch.zeros(2, C), atol=1e-7, rtol=0)


def test_gradient_reaches_gamma_at_zero_init(x):
    block = StablePtychoBlock(C, MODES)
    block(x).square().mean().backward()
    assert block.norm.weight.grad.abs().min() > 0
    assert block.norm.bias.grad is not None


@pytest.mark.parametrize("make", [
    lambda: StablePtychoBlock(C, MODES, gamma_init=1.0, layerscale_init=1e-3),
    lambda: LayerScaleBlock(C, MODES),
])
def test_gradient_reaches_lambda(x, make):
    block = make()
    block(x).square().mean().backward()
    assert block.layerscale.weight.grad.abs().min() > 0


def test_layerscale_block_formula_and_default_init(x):
    block = LayerScaleBlock(C, MODES)
    assert torch.equal(block.layerscale.weight, torch.full((C,), 1e-2))
    with torch.no_grad():
        block.layerscale.weight.copy_(torch.arange(1.0, C + 1))
    branch = block.branch(x)
    torch.testing.assert_close(block(x), x + branch * torch.arange(1.0, C + 1).view(1, C, 1, 1))
    assert not hasattr(block, "norm")


def test_blocks_preserve_shape_on_non_square_maps():
    x = torch.randn(1, C, 16, 12)
    for block in (PtychoBlock(C, 12), StablePtychoBlock(C, 12, gamma_init=1.0),
                  LayerScaleBlock(C, 12, corners=1)):
        assert block(x).shape == x.shape
