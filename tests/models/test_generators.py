"""Generators: shapes, depth semantics, reference parameter counts, knobs, channel cap."""

import pytest
import torch
from torch import nn

from ptychostab.models import (
    KNOB_DEFAULTS,
    LayerScaleBlock,
    SpectralConv2d,
    StablePtychoBlock,
    build_generator,
    describe,
    generator_names,
)
from ptychostab.models.hybrid import default_max_levels, plan_levels

ARCHS = ("hybrid", "stable_hybrid", "stable_hybrid_ls", "layerscale_hybrid", "fno")
TINY = {"hidden_channels": 4, "n_modes": 4}


def test_registry_lists_the_five_generators():
    assert set(generator_names()) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("N", [32, 64, 128])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_output_is_complex_with_gridsize_squared_channels(arch, N, gridsize):
    torch.manual_seed(0)
    C = gridsize**2
    model = build_generator(arch, in_channels=C, N=N, fno_blocks=2, **TINY)
    with torch.no_grad():
        out = model(torch.rand(2, C, N, N))
    assert out.shape == (2, C, N, N) and out.dtype == torch.complex64
    assert out.imag.abs().max() > 0 and out.real.abs().max() > 0
    assert [n for n, _ in model.named_children()][-1] == "head"
    assert model.head.out_channels == 2 * C


@pytest.mark.parametrize("N,levels", [(32, 3), (64, 4), (128, 5), (16, 2), (8, 1)])
def test_default_levels_keep_the_coarsest_map_at_least_8(N, levels):
    assert default_max_levels(N) == levels
    assert len(build_generator("hybrid", N=N, fno_blocks=8, **TINY).blocks_per_level) == levels


@pytest.mark.parametrize("depth,plan", [(1, [1]), (2, [1, 1]), (4, [1, 1, 1, 1]),
                                        (6, [2, 2, 1, 1]), (7, [2, 2, 2, 1]), (8, [2, 2, 2, 2]),
                                        (9, [3, 2, 2, 2])])
def test_depth_spreads_blocks_with_extras_on_finer_levels(depth, plan):
    assert plan_levels(64, depth) == plan
    model = build_generator("hybrid", fno_blocks=depth, **TINY)
    assert [len(level) for level in model.encoder] == plan
    assert describe(model)["spectral_blocks"] == depth + 1  # + bottleneck


def test_reference_four_level_hybrid_parameter_count():
    """4-level hybrid, width 32, modes 12, one corner: the reference's 17,202,402 (numel)."""
    d = describe({"name": "hybrid", "corners": 1})
    assert d["params_numel"] == 17_202_402
    assert d["params_real"] == 32_095_458
    assert d["channels"] == [32, 64, 128, 256] and d["blocks_per_level"] == [1, 1, 1, 1]


@pytest.mark.parametrize("cfg,numel", [
    ({"name": "stable_hybrid", "corners": 1, "gamma_init": 1.0, "layerscale_init": 1e-3},
     17_204_610),  # reference v2: + 3 C per block
    ({"name": "hybrid", "corners": 1, "fno_blocks": 6, "levels": 6}, 276_075_746),
    ({"name": "hybrid", "corners": 1, "fno_blocks": 6, "levels": 6, "max_hidden_channels": 512},
     118_263_522),
    ({"name": "fno", "corners": 1}, 656_002),
    ({"name": "fno", "corners": 1, "fno_blocks": 8}, 1_282_818),
])
def test_other_reference_parameter_counts(cfg, numel):
    assert describe(cfg)["params_numel"] == numel


def test_real_build_matches_meta_count():
    model = build_generator("hybrid", fno_blocks=6, hidden_channels=8, n_modes=6, corners=1)
    d = describe(model)
    assert d["params_numel"] == sum(p.numel() for p in model.parameters())
    assert d["params_numel"] == describe({"name": "hybrid", "fno_blocks": 6, "hidden_channels": 8,
                                          "n_modes": 6, "corners": 1})["params_numel"]


def test_depth_8_at_n64_runs_forward_and_backward():
    torch.manual_seed(0)
    model = build_generator("hybrid", fno_blocks=8, N=64)
    assert model.blocks_per_level == [2, 2, 2, 2]
    out = model(torch.rand(1, 1, 64, 64))
    out.abs().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder[3][1].spectral.weight.grad.abs().sum() > 0  # deepest encoder block


def test_channel_cap_holds_on_the_built_modules():
    cap = 16
    model = build_generator("hybrid", fno_blocks=8, N=64, hidden_channels=4, n_modes=4,
                            max_hidden_channels=cap, max_levels=5)
    assert model.channels == [4, 8, 16, 16, 16]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    spectral = [m for m in model.modules() if isinstance(m, SpectralConv2d)]
    assert max(m.out_channels for m in convs + spectral) == cap
    assert max(m.in_channels for m in convs + spectral) == 2 * cap  # decoder concat
    uncapped = build_generator("hybrid", fno_blocks=8, N=64, hidden_channels=4, n_modes=4,
                               max_levels=5)
    assert max(m.out_channels for m in uncapped.modules() if isinstance(m, nn.Conv2d)) == 64


def test_levels_reproduces_depth_as_levels_and_refuses_impossible_nets():
    model = build_generator("hybrid", fno_blocks=7, levels=7, N=64, **TINY)  # 1 x 1 coarsest
    assert model.blocks_per_level == [1] * 7
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="levels=8"):
        build_generator("hybrid", fno_blocks=8, levels=8, N=64)
    with pytest.raises(ValueError, match="fno_blocks must equal"):
        build_generator("hybrid", fno_blocks=4, levels=6)
    with pytest.raises(ValueError, match="max_levels"):
        build_generator("hybrid", fno_blocks=8, max_levels=8)
    assert plan_levels(64, 6, max_levels=8) == [1] * 6  # a bound, reached only as far as needed


def test_absurd_networks_are_refused_without_allocating():
    # Reference depth-as-levels, 8 levels at N=256, uncapped, one corner: 4096-wide blocks.
    with pytest.raises(ValueError, match=r"parameters.*max_hidden_channels"):
        build_generator("hybrid", fno_blocks=8, levels=8, N=256, corners=1)
    with pytest.raises(ValueError, match="parameters"):
        describe({"name": "hybrid", "fno_blocks": 8, "levels": 8, "N": 256, "corners": 1})


@pytest.mark.parametrize("arch", ARCHS)
def test_every_generator_accepts_the_full_knob_set_at_defaults(arch):
    model = build_generator(arch, in_channels=1, hidden_channels=4, n_modes=4, fno_blocks=2,
                            N=32, **KNOB_DEFAULTS)
    assert model.config["name"] == arch


@pytest.mark.parametrize("arch,knob,value", [
    ("fno", "max_hidden_channels", 512), ("fno", "levels", 4), ("fno", "max_levels", 2),
    ("fno", "gamma_init", 1.0), ("fno", "layerscale_init", 1e-2),
    ("hybrid", "gamma_init", 1.0), ("hybrid", "layerscale_init", 1e-3),
    ("hybrid", "fno_cnn_blocks", 3), ("layerscale_hybrid", "gamma_init", 1.0),
])
def test_a_knob_that_does_not_apply_is_refused_when_set(arch, knob, value):
    with pytest.raises(ValueError, match=knob):
        build_generator(arch, **TINY, **{knob: value})


def test_config_enum_names_become_plain_strings():
    import enum

    class Arch(str, enum.Enum):
        fno = "fno"

    model = build_generator(Arch.fno, **TINY)
    assert type(model.config["name"]) is str and model.config["name"] == "fno"


def test_head_layout_is_real_then_imaginary_per_channel():
    model = build_generator("fno", in_channels=2, **TINY)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        out = model(torch.rand(1, 2, 64, 64))
    assert torch.equal(out[0, :, 0, 0], torch.tensor([1 + 3j, 2 + 4j], dtype=torch.complex64))


def test_unknown_kwarg_and_unknown_name():
    with pytest.raises(TypeError, match="max_hidden"):
        build_generator("hybrid", max_hidden=64)
    with pytest.raises(ValueError, match="fno, hybrid, layerscale_hybrid, stable_hybrid"):
        build_generator("unet")


@pytest.mark.parametrize("field,value", [("corners", 3), ("hidden_channels", 0),
                                         ("fno_blocks", 0), ("n_modes", 1), ("N", 2.5)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        build_generator("hybrid", **{field: value})


def test_block_knobs_reach_the_blocks():
    stable = build_generator("stable_hybrid", gamma_init=0.5, layerscale_init=1e-3, **TINY)
    blocks = [m for m in stable.modules() if isinstance(m, StablePtychoBlock)]
    assert len(blocks) == 5
    assert all(torch.all(b.norm.weight == 0.5) and torch.all(b.layerscale.weight == 1e-3)
               for b in blocks)
    assert all(b.layerscale is None for b in build_generator("stable_hybrid", **TINY).modules()
               if isinstance(b, StablePtychoBlock))
    pivot = build_generator("layerscale_hybrid", **TINY)
    assert pivot.config["layerscale_init"] == 1e-2  # effective value recorded
    assert all(torch.all(b.layerscale.weight == 1e-2) for b in pivot.modules()
               if isinstance(b, LayerScaleBlock))
    fno = build_generator("fno", fno_cnn_blocks=3, **TINY)
    assert sum(isinstance(m, nn.Conv2d) for m in fno.refiner) == 4  # 1x1 mix + 3


def test_stable_hybrid_blocks_are_identities_at_init():
    torch.manual_seed(0)
    model = build_generator("stable_hybrid", N=32, **TINY)
    x = torch.rand(2, 1, 32, 32)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((o - i[0]).abs().max()))
             for b in model.modules() if isinstance(b, StablePtychoBlock)]
    model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 5 and max(seen) < 1e-6  # N=32: 3 levels [2, 1, 1] + bottleneck


def test_two_corner_weights_are_sized_to_each_level():
    model = build_generator("hybrid", N=64)
    modes = [level[0].spectral.n_modes for level in model.encoder]
    assert modes == [(12, 12), (12, 12), (8, 9), (4, 5)]
    assert model.bottleneck.spectral.n_modes == (4, 5)
    ref = build_generator("hybrid", N=64, corners=1, hidden_channels=4)
    assert all(level[0].spectral.n_modes == (12, 12) for level in ref.encoder)
