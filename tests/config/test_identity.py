"""arm_id: a readable label plus a stable hash of what defines the arm."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ptychostab import config as cfgmod
from ptychostab import identity


@functools.lru_cache(maxsize=None)
def aid(*overrides: str) -> str:
    return identity.arm_id(cfgmod.compose(list(overrides)))


def test_stable_under_override_order_and_spelling():
    assert aid("arch=stable_hybrid", "clip=norm", "clip.value=5") == aid(
        "clip.value=5.0", "clip=norm", "arch=stable_hybrid")
    assert aid("trainer.lr=0.001") == aid()  # the default, spelt out


def test_named_arm_and_its_groups_share_one_id():
    assert aid("arm=control") == aid("arch=hybrid", "clip=none") == aid()
    assert aid("arm=arch_fix") == aid("arch=stable_hybrid", "clip=none")
    assert aid("arm=opt_fix") == aid("arch=hybrid", "clip=agc")
    assert aid("arm=control_norm1") == aid("clip=norm", "clip.value=1")


@pytest.mark.parametrize("override", [
    "seed=7", "sweep=other", "strict=true", "retry=[oom,exception]", "outside_study=true",
    "paths.output_root=/elsewhere",
    "trainer.accelerator=cpu", "trainer.sync_every=7", "trainer.eval_batch_size=8",
    "trainer.compile=true", "trainer.tf32=false", "plan.max_memory_gb=5",
    "cluster.partition=gpu", "launcher=slurm", "data.name=renamed", "trainer.progress=log",
    "trainer.log_every_n_steps=100"])
def test_seed_and_run_only_keys_do_not_change_the_arm(override):
    assert aid(override) == aid()


@pytest.mark.parametrize("override", [
    "depth=8", "arch=stable_hybrid", "clip=agc", "arch.hidden_channels=16", "trainer.lr=0.01",
    "trainer.batch_size=8", "trainer.max_epochs=10", "data=grid_lines_n64_small",
    "data.nphotons=1e6", "failure.loss_factor=10", "failure.collapse_ssim=0.2"])
def test_experiment_defining_keys_change_the_arm(override):
    assert aid(override) != aid()


def test_clip_values_are_distinct_arms():
    ids = {aid("clip=norm", f"clip.value={v}") for v in (1, 5, 10, 20, 50, 100)}
    assert len(ids) == 6


def test_labels_are_readable():
    assert aid().startswith("hybrid_none_d4-")
    assert aid("arm=opt_fix").startswith("hybrid_agc0.01_d4-")
    assert aid("clip=norm", "clip.value=5").startswith("hybrid_norm5_d4-")
    assert aid("arm=arch_fix", "depth=8").startswith("stable_hybrid_none_d8-")
    label, digest = aid().rsplit("-", 1)
    assert len(digest) == identity.HASH_DIGITS and int(digest, 16) >= 0


def test_every_top_level_key_is_classified():
    """A new top-level config key must be declared experiment-defining or run-only here."""
    fields = {f.name for f in dataclasses.fields(cfgmod.TrainConfig)}
    assert fields == set(identity.IDENTITY_KEYS) | set(identity.RUN_ONLY_TOP)
    cfg = cfgmod.compose([])
    for leaf in identity.RUN_ONLY_LEAVES:
        assert OmegaConf.select(cfg, leaf, default="<absent>") != "<absent>", leaf


def test_arm_dict_has_the_base_fields_and_the_arm_overrides():
    overrides = ["arm=opt_fix", "seed=3", "data=tiny", "trainer.lr=0.01",
                 "paths.output_root=/x", "launcher=slurm", "+experiment=demo"]
    cfg = cfgmod.compose(overrides[:5])
    arm = identity.arm_dict(cfg, overrides)
    assert arm["label"] == identity.arm_label(cfg)
    base = (arm["arch"], arm["clip"], arm["clip_value"], arm["depth"])
    assert base == ("hybrid", "agc", 0.01, 4)
    assert arm["arm"] == "opt_fix" and arm["data"] == "tiny" and arm["trainer.lr"] == 0.01
    for key in ("seed", "paths.output_root", "launcher", "experiment", "+experiment"):
        assert key not in arm


def test_run_dir_and_hydra_folders_agree(tmp_path):
    cfg = cfgmod.compose(["seed=3", f"paths.output_root={tmp_path}", "sweep=s1"],
                    return_hydra_config=True)
    expected = tmp_path / "s1" / aid("seed=3") / "seed=3"
    plain = cfgmod.compose(["seed=3", f"paths.output_root={tmp_path}", "sweep=s1"])
    assert identity.run_dir(plain) == expected
    assert Path(cfg.hydra.run.dir) == expected
    assert Path(cfg.hydra.sweep.dir, cfg.hydra.sweep.subdir) == expected
    assert "${now" not in OmegaConf.to_yaml(cfg.hydra.run) + OmegaConf.to_yaml(cfg.hydra.sweep)


def test_the_folder_resolver_validates(tmp_path):
    cfg = cfgmod.compose(["clip=norm", "clip.value=-1"], return_hydra_config=True, check=False)
    with pytest.raises(Exception) as info:
        _ = cfg.hydra.run.dir
    assert "clip.value=-1.0" in str(info.value)
