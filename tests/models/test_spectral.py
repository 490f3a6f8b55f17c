"""SpectralConv2d against a dense DFT written from the definitions (no torch.fft)."""

import math

import numpy as np
import pytest
import torch

from ptychostab.models.layers import SpectralConv2d, fit_modes


def dense_reference(x: np.ndarray, weight: np.ndarray, m: int, corners: int) -> np.ndarray:
    """Spectral conv by explicit DFT sums: forward DFT, mix kept modes, inverse real DFT."""
    _, _, H, W = x.shape
    n, k = np.arange(H), np.arange(H)
    col, l_ = np.arange(W), np.arange(W // 2 + 1)
    fwd_h = np.exp(-2j * np.pi * np.outer(k, n) / H)  # (k, n)
    fwd_w = np.exp(-2j * np.pi * np.outer(col, l_) / W)  # (m, l)
    X = np.einsum("kn,bcnm,ml->bckl", fwd_h, x, fwd_w)  # (B, in, H, W//2+1)

    cols = min(m, W // 2 + 1)
    Y = np.zeros((x.shape[0], weight.shape[1], H, W // 2 + 1), complex)
    if corners == 1:
        rows = [(r, weight[:, :, r]) for r in range(min(m, H))]
    else:  # bottom corner: at most H//2 negative rows; top corner: the rest, up to m
        bottom = min(m, H // 2)
        top = min(m, H - bottom)
        rows = [(r, weight[:, :, 0, r]) for r in range(top)]
        rows += [(H - bottom + j, weight[:, :, 1, j]) for j in range(bottom)]
    for r, w in rows:
        Y[:, :, r, :cols] = np.einsum("bil,iol->bol", X[:, :, r, :cols], w[:, :, :cols])

    inv_h = np.exp(2j * np.pi * np.outer(n, k) / H) / H
    Z = np.einsum("nk,bokl->bonl", inv_h, Y)
    c = np.full(W // 2 + 1, 2.0)
    c[0] = 1.0
    if W % 2 == 0:
        c[-1] = 1.0
    phase = np.exp(2j * np.pi * np.outer(l_, col) / W)  # (l, m)
    return np.einsum("l,bonl,lm->bonm", c, Z, phase).real / W


@pytest.mark.parametrize("corners", [1, 2])
@pytest.mark.parametrize("H,W,m", [(8, 8, 3), (8, 8, 12), (16, 12, 4), (7, 6, 5), (1, 1, 4)])
def test_matches_dense_dft(corners, H, W, m):
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 2, m, corners=corners)
    x = torch.randn(2, 3, H, W)
    got = layer(x).detach().numpy()
    want = dense_reference(x.double().numpy(), layer.weight.detach().cdouble().numpy(), m, corners)
    assert got.shape == (2, 2, H, W)
    assert np.abs(want).max() > 1e-2  # the comparison is not between two zero maps
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)


def test_float64_input_matches_dense_dft_tightly():
    torch.manual_seed(1)
    layer = SpectralConv2d(2, 3, 4, corners=2)
    x = torch.randn(1, 2, 10, 10, dtype=torch.float64)
    want = dense_reference(x.numpy(), layer.weight.detach().cdouble().numpy(), 4, 2)
    np.testing.assert_allclose(layer(x).detach().numpy(), want, atol=1e-5)


def test_one_corner_drops_negative_row_frequencies_two_corners_keep_them():
    """The reference's fallback is anisotropic: it sees (1, 1) waves but not (-1, 1) ones."""
    n = torch.arange(8.0)
    diagonal = torch.cos(2 * math.pi * (n[:, None] + n[None, :]) / 8)[None, None]
    anti = torch.cos(2 * math.pi * (n[:, None] - n[None, :]) / 8)[None, None]
    one, two = SpectralConv2d(1, 1, 3, corners=1), SpectralConv2d(1, 1, 3, corners=2)
    assert one(diagonal).abs().max() > 0.1
    assert one(anti).abs().max() < 1e-5
    assert two(anti).abs().max() > 0.1


def test_weight_shapes_and_init_scale():
    one = SpectralConv2d(64, 8, 12, corners=1)
    two = SpectralConv2d(64, 8, (12, 7), corners=2)
    assert one.weight.shape == (64, 8, 12, 12) and one.weight.dtype == torch.cfloat
    assert two.weight.shape == (64, 8, 2, 12, 7)
    want = 1 / math.sqrt(2 * 64)  # Re and Im of randn_complex / sqrt(in)
    for w in (one.weight.detach(), two.weight.detach()):
        assert abs(w.real.std().item() / want - 1) < 0.1
        assert abs(w.imag.std().item() / want - 1) < 0.1


def test_fitted_weights_compute_the_same_map():
    """Sizing a two-corner weight to the map (what the generators do) changes no output."""
    torch.manual_seed(2)
    full = SpectralConv2d(3, 3, 12, corners=2)
    fitted = SpectralConv2d(3, 3, fit_modes(12, 8), corners=2)
    assert fitted.n_modes == (4, 5)
    with torch.no_grad():
        fitted.weight.copy_(full.weight[..., :4, :5])
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fitted(x), full(x))


def test_gradients_flow_to_kept_modes_only():
    layer = SpectralConv2d(2, 2, 12, corners=1)
    layer(torch.randn(1, 2, 8, 8)).square().sum().backward()
    g = layer.weight.grad
    assert g[:, :, :8, :5].abs().sum() > 0
    assert g[:, :, 8:].abs().sum() == 0 and g[:, :, :, 5:].abs().sum() == 0


def test_rejects_bad_corners():
    with pytest.raises(ValueError, match="corners"):
        SpectralConv2d(1, 1, 4, corners=3)
