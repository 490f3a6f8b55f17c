"""profile=reference: the reference's network one switch away (issue 13).

Each knob the profile sets is asserted in the composed config and where the code reads it (the
generator's parameter count, the clipper's granularity and head); the profile wins over a group
option picked later (arm=opt_fix / clip=agc set agc_unitwise: true); arm ids differ between
profiles but not between routes to the same knobs; the seed's Stage A control preset composes
with the recorded conditions and stays out of the Stage A/B decision.
"""

from __future__ import annotations

import functools

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from ptychostab import config as cfgmod
from ptychostab import identity
from ptychostab.cli.plan import build_plan
from ptychostab.launch import estimate
from ptychostab.launch import plan as planmod
from ptychostab.models import build_generator
from ptychostab.models.layers import StablePtychoBlock
from ptychostab.training.clipping import GradientClipper

REFERENCE_NUMEL = 17_202_402  # the reference's 4-level one-corner hybrid (tests/models)
DEFAULT_NUMEL = 11_386_082  # ours: two corners, blocks spread over <= 4 levels
TINY = ["arch.hidden_channels=4", "arch.n_modes=4"]


@functools.lru_cache(maxsize=None)
def compose(*overrides: str):
    return cfgmod.compose(list(overrides))


def plain(*overrides: str) -> dict:
    return OmegaConf.to_container(cfgmod.to_plain(compose(*overrides)))


def knobs(cfg) -> tuple:
    return (cfg.profile, cfg.arch.corners, cfg.arch.levels, cfg.clip.agc_unitwise,
            list(cfg.clip.agc_exclude))


def test_profile_sets_each_knob():
    assert knobs(compose()) == ("default", 2, None, True, ["head"])
    assert knobs(compose("profile=default")) == ("default", 2, None, True, ["head"])
    assert knobs(compose("profile=reference")) == ("reference", 1, 4, False, [])
    # levels follows the depth (the reference's depth = levels)
    assert compose("profile=reference", "depth=6").arch.levels == 6


@pytest.mark.parametrize("overrides", [
    ("profile=reference", "arm=opt_fix"), ("arm=opt_fix", "profile=reference"),
    ("profile=reference", "clip=agc"), ("+experiment=stage_a", "arm=opt_fix", "profile=reference"),
])
def test_profile_wins_over_a_group_option_chosen_later(overrides):
    cfg = compose(*overrides)
    assert (str(cfg.clip.algorithm), cfg.clip.value) == ("agc", 0.01)
    assert knobs(cfg)[1:] == (1, 4, False, [])


def test_a_command_line_value_still_wins_over_the_profile():
    cfg = compose("profile=reference", "clip=agc", "clip.agc_unitwise=true", "arch.corners=2")
    assert cfg.clip.agc_unitwise is True and cfg.arch.corners == 2


def test_the_knobs_reach_the_generator():
    ref = estimate.describe_config(plain("profile=reference"))
    ours = estimate.describe_config(plain())
    assert ref["params_numel"] == REFERENCE_NUMEL
    assert ref["channels"] == [32, 64, 128, 256] and ref["blocks_per_level"] == [1, 1, 1, 1]
    assert ours["params_numel"] == DEFAULT_NUMEL
    model = build_generator(**{**plain("profile=reference", *TINY)["arch"], "N": 64})
    assert model.config["corners"] == 1 and model.config["levels"] == 4
    assert all(m.corners == 1 for m in model.modules() if hasattr(m, "corners"))


def test_reference_depth_8_at_n64_is_refused_as_in_the_reference():
    with pytest.raises(ValueError, match="levels=8"):
        estimate.describe_config(plain("profile=reference", "depth=8"))


def _clipper_and_model(*overrides: str):
    cfg = plain(*overrides, *TINY)
    model = build_generator(**{**cfg["arch"], "N": 32})
    return GradientClipper.from_config(cfg["clip"]), model


def test_the_knobs_reach_the_clipper_tensorwise_with_the_head():
    clipper, model = _clipper_and_model("profile=reference", "arm=opt_fix")
    assert (clipper.algorithm, clipper.agc_unitwise, clipper.agc_exclude) == ("agc", False, ())
    d = clipper.describe(model)
    n_params = sum(1 for _ in model.parameters())
    assert d["excluded_params"] == [] and d["clipped_params"] == n_params
    assert d["units"] == n_params  # one unit per tensor: the reference's AGC
    assert any(name.startswith("head.") for name, _ in model.named_parameters())

    ours, model = _clipper_and_model("arm=opt_fix")
    d = ours.describe(model)
    assert ours.agc_unitwise and d["excluded_params"] == ["head.weight", "head.bias"]
    assert d["units"] > n_params


def test_the_stable_block_is_the_zero_gamma_variant_under_the_reference():
    cfg = compose("profile=reference", "arm=arch_fix")
    assert (str(cfg.arch.name), cfg.arch.gamma_init, cfg.arch.layerscale_init) == (
        "stable_hybrid", 0.0, None)
    model = build_generator(**{**plain("profile=reference", "arm=arch_fix", *TINY)["arch"],
                               "N": 32})
    blocks = [m for m in model.modules() if isinstance(m, StablePtychoBlock)]
    assert blocks and all(b.layerscale is None and not b.norm.weight.any() for b in blocks)


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_stable_hybrid_ls_is_the_layerscale_variant_under_either_profile(profile):
    cfg = compose(f"profile={profile}", "arch=stable_hybrid_ls")
    assert (str(cfg.arch.name), cfg.arch.gamma_init, cfg.arch.layerscale_init) == (
        "stable_hybrid_ls", 1.0, 1e-3)
    assert identity.arm_label(cfg) == "stable_hybrid_ls_none_d4"  # reads apart from stable_hybrid
    model = build_generator(**{**plain(f"profile={profile}", "arch=stable_hybrid_ls",
                                       *TINY)["arch"], "N": 32})
    blocks = [m for m in model.modules() if isinstance(m, StablePtychoBlock)]
    assert blocks and all(b.layerscale is not None for b in blocks)
    assert all(torch.all(b.norm.weight == 1) for b in blocks)
    assert all(torch.allclose(b.layerscale.weight, torch.full_like(b.layerscale.weight, 1e-3))
               for b in blocks)
    if profile == "reference":  # the reference HEAD's v2 count
        assert estimate.describe_config(plain("profile=reference", "arch=stable_hybrid_ls"))[
            "params_numel"] == 17_204_610


def test_stable_hybrid_ls_by_name_alone_is_the_head_variant():
    model = build_generator("stable_hybrid_ls", hidden_channels=4, n_modes=4, N=32)
    assert (model.config["gamma_init"], model.config["layerscale_init"]) == (1.0, 1e-3)


@pytest.mark.parametrize("arm", ["control", "arch_fix", "opt_fix", "control_norm1"])
def test_arm_ids_differ_between_profiles(arm):
    ours = identity.arm_id(compose(f"arm={arm}"))
    ref = identity.arm_id(compose(f"arm={arm}", "profile=reference"))
    assert ours != ref
    assert ours.rsplit("-", 1)[0] == ref.rsplit("-", 1)[0]  # same label, different hash


def test_the_profile_name_is_a_route_not_part_of_the_hash():
    by_profile = compose("profile=reference", "arm=opt_fix")
    spelt_out = compose("arm=opt_fix", "arch.corners=1", "arch.levels=4",
                        "clip.agc_unitwise=false", "clip.agc_exclude=[]")
    assert identity.arm_id(by_profile) == identity.arm_id(spelt_out)
    assert "profile" not in identity.identity_config(by_profile)


def test_manifest_and_arm_dict_show_the_profile():
    cfg = compose("+experiment=seed_stage_a_control")  # the profile chosen inside the preset
    assert cfgmod.to_plain(cfg).profile == "reference"  # the manifest stores this resolved config
    assert identity.arm_dict(cfg, ["+experiment=seed_stage_a_control"])["profile"] == "reference"
    assert identity.arm_dict(cfg, ["profile=reference"])["profile"] == "reference"
    assert "profile" not in identity.arm_dict(compose(), [])
    assert cfgmod.to_plain(compose()).profile == "default"


def test_seed_control_preset_composes_with_the_recorded_conditions():
    cfg = compose("+experiment=seed_stage_a_control")
    assert (cfg.profile, cfg.sweep, cfg.seed, cfg.depth) == (
        "reference", "seed_control_rerun", 20260128, 4)
    assert (str(cfg.arch.name), cfg.arch.fno_blocks, cfg.arch.corners, cfg.arch.levels) == (
        "hybrid", 4, 1, 4)
    assert (str(cfg.clip.algorithm), cfg.clip.value) == ("norm", 1.0)
    d = cfg.data
    assert (d.N, d.gridsize, d.nimgs_train, d.nimgs_test, d.nphotons, d.set_phi) == (
        64, 1, 2, 2, 1e9, True)
    t = cfg.trainer
    assert (str(t.loss), t.max_epochs, t.batch_size, t.lr, str(t.optimizer)) == (
        "mae", 50, 16, 1e-3, "adam")


def test_seed_control_sweep_stays_out_of_the_stage_a_b_decision():
    rule = yaml.safe_load((cfgmod.CONF_DIR / "decision" / "default.yaml").read_text())
    sweep = compose("+experiment=seed_stage_a_control").sweep
    for stage in rule["stages"].values():
        assert stage["sweep_contains"] not in sweep


def test_seed_control_dry_run(tmp_path):
    plan = build_plan(["+experiment=seed_stage_a_control", f"paths.output_root={tmp_path}"])
    (arm,) = plan.arms.values()
    assert len(plan.jobs) == 1 and plan.jobs[0].seed == 20260128
    assert arm.params_numel == REFERENCE_NUMEL and arm.fields["profile"] == "reference"
    assert "profile reference" in planmod.format_plan(plan)
