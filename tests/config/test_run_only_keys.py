"""Every run-only key leaves the arm id alone (else it would split an arm's seeds), and the
refusals of configs that could never run hold in the default suite."""

from __future__ import annotations

import functools

import pytest

from ptychostab import config as cfgmod
from ptychostab import identity

# One changed, valid value for every run-only key (identity.RUN_ONLY_TOP / RUN_ONLY_LEAVES).
CHANGED = {
    "seed": "seed=7",
    "sweep": "sweep=other",
    "strict": "strict=true",
    "profile": "profile=reference",  # a route to knob values: its knobs decide the id
    "retry": "retry=[oom,exception]",
    "pack": "pack=4",
    "outside_study": "outside_study=true",
    "paths": "paths.output_root=/elsewhere",
    "plan": "plan.max_memory_gb=5",
    "cluster": "cluster.partition=gpu",
    "logger": "logger=csv",
    "diagnostics": "diagnostics.every_n_epochs=3",
    "data.name": "data.name=renamed",
    "trainer.accelerator": "trainer.accelerator=cpu",
    "trainer.sync_every": "trainer.sync_every=7",
    "trainer.eval_batch_size": "trainer.eval_batch_size=8",
    "trainer.max_data_on_device_gb": "trainer.max_data_on_device_gb=0.5",
    "trainer.compile": "trainer.compile=true",
    "trainer.cuda_graphs": "trainer.cuda_graphs=true",
    "trainer.tf32": "trainer.tf32=false",
    "trainer.progress": "trainer.progress=log",
    "trainer.log_every_n_steps": "trainer.log_every_n_steps=100",
}


@functools.lru_cache(maxsize=None)
def _cfg(*overrides: str):
    return cfgmod.compose(list(overrides), check=False)


def test_every_run_only_key_is_listed_here():
    assert set(CHANGED) == set(identity.RUN_ONLY_TOP) | set(identity.RUN_ONLY_LEAVES)


@pytest.mark.parametrize("key", sorted(set(CHANGED) - {"profile"}))
def test_changing_a_run_only_key_leaves_the_arm_id(key):
    changed = _cfg(CHANGED[key])
    assert identity.arm_id(changed) == identity.arm_id(_cfg())
    if "." in key:  # the override reached the composed config (the test is not vacuous)
        assert str(cfgmod.to_plain(changed)[key.split(".")[0]][key.split(".")[1]]) != str(
            cfgmod.to_plain(_cfg())[key.split(".")[0]][key.split(".")[1]])


def test_the_profile_label_alone_is_run_only():
    """``profile`` names a set of knob values; the knobs (not the label) decide the arm."""
    cfg = _cfg()
    relabelled = cfgmod.to_plain(cfg)
    relabelled["profile"] = "something-else"
    assert identity.arm_hash(relabelled) == identity.arm_hash(cfgmod.to_plain(cfg))


@pytest.mark.parametrize("leaf", identity.RUN_ONLY_LEAVES)
def test_run_only_leaves_are_not_hashed(leaf):
    node, name = leaf.split(".")
    assert name not in identity.identity_config(_cfg()).get(node, {})


def _problems(*overrides: str) -> list[str]:
    return cfgmod.problems(_cfg(*overrides))


def test_warmup_as_long_as_training_is_refused():
    assert any("trainer.warmup_epochs=5 must be < trainer.max_epochs=5" in p
               for p in _problems("trainer.max_epochs=5", "trainer.warmup_epochs=5"))
    assert _problems("trainer.max_epochs=5", "trainer.warmup_epochs=4") == []


def test_sync_every_zero_is_refused():
    assert any(p.startswith("trainer.sync_every=0") for p in _problems("trainer.sync_every=0"))
    assert _problems("trainer.sync_every=1") == []
