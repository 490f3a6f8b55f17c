"""Clipping: AGC against hand-computed numbers per layer type, and each algorithm as defined."""

import math

import pytest
import torch
from torch import nn

from ptychostab.models import build_generator
from ptychostab.models.layers.spectral import SpectralConv2d
from ptychostab.training.clipping import (
    GradientClipper,
    adaptive_gradient_clip_,
    agc_units,
    clip_grad_value_complex_,
    global_grad_norm,
    unit_axis,
)


def set_(param: torch.Tensor, weight, grad) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(weight, dtype=param.dtype).reshape(param.shape))
    param.grad = torch.as_tensor(grad, dtype=param.dtype).reshape(param.shape).clone()


def grad(param) -> torch.Tensor:
    return param.grad.reshape(-1)


class Wrap(nn.Module):
    """A network with one layer under test and a head, as the generators have."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.head = nn.Conv2d(1, 2, 1)


# --- AGC, hand-computed ------------------------------------------------------------------------
def test_agc_linear_rows_are_units():
    # W rows (output units) have norms 5 and 1; G rows 0.5 and 1; lambda 0.2 -> limits 1, 0.2
    net = Wrap(nn.Linear(3, 2))
    set_(net.layer.weight, [[3, 4, 0], [0, 0, 1]], [[0.3, 0.4, 0], [0, 0, 1]])
    set_(net.layer.bias, [3, 4], [30, 40])  # one unit: |b| = 5, |g| = 50 > 1 -> x 0.02
    adaptive_gradient_clip_(net, 0.2)
    torch.testing.assert_close(grad(net.layer.weight), torch.tensor([0.3, 0.4, 0, 0, 0, 0.2]))
    torch.testing.assert_close(grad(net.layer.bias), torch.tensor([0.6, 0.8]))


def test_agc_conv2d_output_channels_are_units():
    net = Wrap(nn.Conv2d(2, 2, 1, bias=False))  # weight (out=2, in=2, 1, 1)
    set_(net.layer.weight, [[1, 0], [0, 2]], [[3, 4], [0, 1]])
    adaptive_gradient_clip_(net, 1.0)  # limits 1 and 2; |G_0| = 5 -> x 0.2; |G_1| = 1 kept
    torch.testing.assert_close(grad(net.layer.weight), torch.tensor([0.6, 0.8, 0, 1]))


def test_agc_conv_transpose_units_are_dim_1():
    net = Wrap(nn.ConvTranspose2d(2, 3, 1, bias=False))  # weight (in=2, out=3, 1, 1)
    assert unit_axis(net.layer, "weight", net.layer.weight) == (1, False)
    # columns (outputs) have norms 1, 0 (-> eps 1e-3), 2; every grad column has norm 1
    set_(net.layer.weight, [[1, 0, 2], [0, 0, 0]], [[1, 1, 1], [0, 0, 0]])
    adaptive_gradient_clip_(net, 0.5)  # limits 0.5, 5e-4, 1.0
    torch.testing.assert_close(grad(net.layer.weight), torch.tensor([0.5, 5e-4, 1, 0, 0, 0]))


def test_agc_complex_spectral_weight_units_are_outputs_by_modulus():
    net = Wrap(SpectralConv2d(2, 2, n_modes=1, corners=1))  # weight (in=2, out=2, 1, 1) cfloat
    w = net.layer.weight
    assert unit_axis(net.layer, "weight", w) == (1, False)
    # output 0: [3, 4j] (norm 5); output 1: [0.6j, 0.8] (norm 1)
    set_(w, [[3, 0.6j], [4j, 0.8]], [[1, 2j], [0, 0]])  # grad norms 1 and 2
    adaptive_gradient_clip_(net, 0.5)  # limits 2.5 and 0.5 -> output 1 scaled by 0.25
    torch.testing.assert_close(grad(w), torch.tensor([1, 0.5j, 0, 0], dtype=torch.cfloat))


def test_agc_spectral_two_corner_weight():
    layer = SpectralConv2d(1, 2, n_modes=1, corners=2)  # weight (1, 2, 2, 1, 1)
    net = Wrap(layer)
    set_(layer.weight, [[[3], [4j]], [[1], [0]]], [[[0], [10]], [[1], [0]]])
    # output 0 = [3, 4j] (norm 5), grad norm 10 > 5 -> x 0.5; output 1 = [1, 0], grad 1 kept
    adaptive_gradient_clip_(net, 1.0)
    torch.testing.assert_close(grad(layer.weight),
                               torch.tensor([0, 5, 1, 0], dtype=torch.cfloat))


def test_agc_head_excluded_only_when_asked():
    net = Wrap(nn.Linear(1, 1))
    set_(net.head.weight, [1, 1], [100, 0])
    set_(net.layer.weight, [1], [0])
    adaptive_gradient_clip_(net, 0.01, exclude=("head",))
    torch.testing.assert_close(grad(net.head.weight), torch.tensor([100.0, 0.0]))
    adaptive_gradient_clip_(net, 0.01)  # head is a Conv2d: row units with norm 1 -> limit 0.01
    torch.testing.assert_close(grad(net.head.weight), torch.tensor([0.01, 0.0]))


def test_agc_exclude_typo_is_refused():
    with pytest.raises(ValueError, match="hed"):
        adaptive_gradient_clip_(Wrap(nn.Linear(1, 1)), 0.1, exclude=("hed",))


class Custom(nn.Module):
    def __init__(self, declared=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, 2))
        if declared is not None:
            self.agc_unit_axis = declared


@pytest.mark.parametrize("declared", [None, 1, {"w": 1}])  # None: unknown type, dim 0
def test_agc_custom_modules_default_and_declared_axis(declared):
    m = Custom(declared)
    set_(m.w, [[1, 0], [0, 1]], [[3, 4], [0, 0]])
    axis, defaulted = unit_axis(m, "w", m.w)
    assert (axis, defaulted) == ((0, True) if declared is None else (1, False))
    adaptive_gradient_clip_(m, 0.5)
    if declared is None:  # row 0: |W| 1, |G| 5 -> x 0.1
        expect = torch.tensor([0.3, 0.4, 0.0, 0.0])
    else:  # col 0: |W| 1, |G| 3 -> x 1/6; col 1: |W| 1, |G| 4 -> x 1/8
        expect = torch.tensor([0.5, 0.5, 0.0, 0.0])
    torch.testing.assert_close(grad(m.w), expect)


def test_default_axis_is_reported():
    d = GradientClipper("agc", 0.1, agc_exclude=()).describe(Custom())
    assert d["default_axis_params"] == ["w"]


# --- the reference's tensor-wise AGC and its tests ----------------------------------------------
class Vec(nn.Module):
    def __init__(self, weight, g):
        super().__init__()
        self.p = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32))
        self.p.grad = torch.as_tensor(g, dtype=torch.float32)


@pytest.mark.parametrize("unitwise", [True, False])
def test_reference_agc_cases(unitwise):
    m = Vec(0.1 * torch.ones(4), 100 * torch.ones(4))
    adaptive_gradient_clip_(m, 0.01, unitwise=unitwise)
    assert m.p.grad.norm() <= 0.01 * m.p.norm() + 1e-6
    m = Vec(10 * torch.ones(4), 1e-3 * torch.ones(4))
    adaptive_gradient_clip_(m, 0.01, unitwise=unitwise)
    torch.testing.assert_close(m.p.grad, 1e-3 * torch.ones(4))
    m = Vec(torch.zeros(4), 5 * torch.ones(4))
    adaptive_gradient_clip_(m, 0.01, eps=1e-3, unitwise=unitwise)
    assert torch.isfinite(m.p.grad).all()
    torch.testing.assert_close(m.p.grad.norm(), torch.tensor(1e-5))


def test_tensorwise_uses_whole_tensor_norm():
    net = Wrap(nn.Linear(3, 2))
    set_(net.layer.weight, [[3, 4, 0], [0, 0, 1]], [[0.3, 0.4, 0], [0, 0, 1]])
    net.layer.bias.grad = torch.zeros(2)
    adaptive_gradient_clip_(net, 0.25, unitwise=False)  # |W| = sqrt 26, |G| = sqrt 1.25 kept
    torch.testing.assert_close(grad(net.layer.weight), torch.tensor([0.3, 0.4, 0, 0, 0, 1.0]))
    adaptive_gradient_clip_(net, 0.1, unitwise=False)  # limit 0.1 sqrt 26 = 0.51 < 1.118
    scale = 0.1 * math.sqrt(26) / math.sqrt(1.25)
    torch.testing.assert_close(grad(net.layer.weight),
                               scale * torch.tensor([0.3, 0.4, 0, 0, 0, 1.0]))


def test_agc_keeps_nan_visible():
    m = Vec(torch.ones(2), [math.nan, 1.0])
    adaptive_gradient_clip_(m, 0.01)
    assert torch.isnan(m.p.grad).any()


def slow_agc(model, lam, eps, exclude):
    """Straightforward per-parameter, per-unit AGC: the definition, looped."""
    for u in agc_units(model, exclude):
        p, g = u.param.detach(), u.param.grad
        if u.axis is None:
            w_n, g_n = p.abs().norm(), g.abs().norm()
            limit = lam * max(w_n.item(), eps)
            if g_n > limit:
                g.mul_(limit / g_n)
            continue
        for i in range(p.shape[u.axis]):
            w_i, g_i = p.select(u.axis, i), g.select(u.axis, i)
            limit = lam * max(w_i.abs().norm().item(), eps)
            g_n = g_i.abs().norm()
            if g_n > limit:
                g_i.mul_(limit / g_n)


@pytest.mark.parametrize("name", ["hybrid", "stable_hybrid", "fno"])
def test_vectorised_agc_matches_the_definition_on_real_generators(name):
    torch.manual_seed(0)
    model = build_generator(name, hidden_channels=4, n_modes=4, fno_blocks=2, N=16)
    x = torch.rand(3, 1, 16, 16)
    model(x).abs().square().sum().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = reference[n].clone()
    slow_agc(model, 0.01, 1e-3, ("head",))
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = reference[n].clone()
    clipper = GradientClipper("agc", 0.01, agc_exclude=["head"])
    clipper(model)
    clipper(model)  # cached plan, second application: idempotent for clipped units
    changed = 0
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-9)
        changed += not torch.equal(p.grad, reference[n])
    assert changed > 0
    assert torch.equal(model.head.weight.grad, reference["head.weight"])


# --- dispatch: each algorithm exactly as defined -------------------------------------------------
def two_params(g1, g2):
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(2, dtype=torch.cfloat))
    a.grad = torch.tensor(g1, dtype=torch.float32)
    b.grad = torch.tensor(g2, dtype=torch.cfloat)
    m = nn.Module()
    m.a, m.b = a, b
    return m


def test_global_norm_counts_complex_by_modulus():
    m = two_params([3.0, 0.0], [4j, 0])
    torch.testing.assert_close(global_grad_norm(m.parameters()), torch.tensor(5.0))


def test_clip_none_leaves_gradients():
    m = two_params([3.0, 0.0], [4j, 0])
    pre, post = GradientClipper("none")(m)
    assert pre == post == 5.0
    torch.testing.assert_close(m.b.grad, torch.tensor([4j, 0]))


@pytest.mark.parametrize("threshold, factor", [(1.0, 1.0 / (5.0 + 1e-6)), (10.0, 1.0)])
def test_clip_norm_scales_by_threshold_over_norm(threshold, factor):
    m = two_params([3.0, 0.0], [4j, 0])
    pre, post = GradientClipper("norm", threshold)(m)
    assert pre.item() == pytest.approx(5.0)
    torch.testing.assert_close(m.a.grad, torch.tensor([3.0 * factor, 0.0]))
    torch.testing.assert_close(m.b.grad, torch.tensor([4j * factor, 0]))
    assert post.item() == pytest.approx(min(5.0, threshold), rel=1e-5)


def test_clip_value_clamps_entries_and_complex_parts():
    m = two_params([3.0, -0.5], [4 - 7j, 0.2 + 0.1j])
    GradientClipper("value", 1.0)(m)
    torch.testing.assert_close(m.a.grad, torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(m.b.grad, torch.tensor([1 - 1j, 0.2 + 0.1j]))
    clip_grad_value_complex_(m.parameters(), 0.1)
    torch.testing.assert_close(m.a.grad, torch.tensor([0.1, -0.1]))


def test_clip_agc_dispatch_equals_function():
    a, b = Wrap(nn.Linear(3, 2)), Wrap(nn.Linear(3, 2))
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        for p in m.parameters():
            p.grad = torch.ones_like(p) * 7
    adaptive_gradient_clip_(a, 0.05, eps=1e-2, exclude=("head",), unitwise=True)
    pre, post = GradientClipper("agc", 0.05, agc_eps=1e-2, agc_exclude=("head",))(b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)
    assert post < pre


@pytest.mark.parametrize("algorithm, value", [("norm", None), ("agc", 0.0), ("value", -1),
                                              ("clip", 1.0)])
def test_bad_clip_settings_are_refused(algorithm, value):
    with pytest.raises(ValueError):
        GradientClipper(algorithm, value)


def test_from_config_refuses_unknown_keys():
    with pytest.raises(TypeError):
        GradientClipper.from_config({"algorithm": "none", "value": None, "agc_epss": 1})


def test_agc_non_contiguous_gradient():
    net = Wrap(nn.Linear(3, 2, bias=False))
    set_(net.layer.weight, [[3, 4, 0], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]])
    net.layer.weight.grad = torch.tensor([[0.3, 0.0], [0.4, 0.0], [0.0, 1.0]]).t()
    assert not net.layer.weight.grad.is_contiguous()
    adaptive_gradient_clip_(net, 0.2, exclude=("head",))
    torch.testing.assert_close(grad(net.layer.weight), torch.tensor([0.3, 0.4, 0, 0, 0, 0.2]))
