"""describe(): counts, schedule, memory estimate from meta tensors, speed."""

import time

import pytest
import torch
from torch import nn

from ptychostab.models import build_generator, describe
from ptychostab.models.describe import saved_activation_bytes

KEYS = {"params_real", "params_numel", "channels", "blocks_per_level", "memory_bytes_estimate"}


def test_module_and_config_agree():
    cfg = {"name": "stable_hybrid", "hidden_channels": 8, "n_modes": 6, "fno_blocks": 6,
           "N": 32, "layerscale_init": 1e-3}
    from_cfg = describe(cfg)
    from_model = describe(build_generator(**cfg))
    assert KEYS <= from_cfg.keys()
    for key in ("params_real", "params_numel", "channels", "blocks_per_level", "levels",
                "activation_bytes", "memory_bytes_estimate", "config"):
        assert from_cfg[key] == from_model[key], key
    assert from_cfg["channels"] == [8, 16, 32] and from_cfg["blocks_per_level"] == [2, 2, 2]


def test_complex_weights_count_twice_in_params_real():
    d = describe({"name": "fno", "hidden_channels": 4, "n_modes": 3, "fno_blocks": 1, "N": 16})
    spectral = 4 * 4 * 2 * 3 * 3  # one block, two corners
    assert d["params_real"] - d["params_numel"] == spectral


def test_activation_estimate_counts_saved_tensors_not_parameters():
    """A conv saves its input; GELU saves its input: two (B, C, N, N) maps, plus the output."""
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.big = nn.Parameter(torch.zeros(10_000))

        def forward(self, x):
            return torch.nn.functional.gelu(self.conv(x)) + self.big.sum()

    got = saved_activation_bytes(Tiny(), (4, 2, 8, 8))
    want = 4 * (4 * 2 * 64) + 4 * (4 * 3 * 64) + 4 * (4 * 3 * 64)  # conv in, gelu in, output
    assert got == want


def test_memory_grows_with_batch_and_includes_adam_state():
    small, large = (describe({"name": "hybrid", "hidden_channels": 8}, batch_size=b)
                    for b in (4, 8))
    # Linear in the batch, except for batch-independent weight copies the contraction saves.
    assert 1.5 < large["activation_bytes"] / small["activation_bytes"] <= 2.0
    assert small["memory_bytes_estimate"] == 4 * small["param_bytes"] + small["activation_bytes"]
    assert small["param_bytes"] == 4 * small["params_real"]  # fp32 reals, complex64 = 2 x 4 B


def test_describe_is_fast_for_big_configs_and_allocates_nothing():
    describe({"name": "hybrid"})  # first meta op pays torch's one-time lazy imports
    t0 = time.perf_counter()
    d = describe({"name": "hybrid", "corners": 1, "fno_blocks": 7, "levels": 7})
    assert time.perf_counter() - t0 < 1.0
    assert d["params_numel"] > 1e9  # 4.4 GB of weights: only a meta build can be this fast
    assert d["largest_param"]["bytes"] > 2**30


def test_bad_config_raises_like_build_generator():
    with pytest.raises(ValueError, match="name"):
        describe({"hidden_channels": 8})
    with pytest.raises(TypeError):
        describe({"name": "hybrid", "width": 8})
    with pytest.raises(ValueError, match="levels=9"):
        describe({"name": "hybrid", "fno_blocks": 9, "levels": 9})


def test_meta_estimate_equals_the_same_count_on_real_tensors():
    """The meta forward saves exactly what a real CPU forward saves (same ops, same shapes)."""
    torch.manual_seed(0)
    model = build_generator("stable_hybrid", hidden_channels=4, n_modes=4, N=32,
                            layerscale_init=1e-2)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(params), 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(torch.rand(3, 1, 32, 32))
    total += out.numel() * out.element_size()
    assert saved_activation_bytes(model, (3, 1, 32, 32)) == total
