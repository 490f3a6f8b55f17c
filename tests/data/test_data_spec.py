"""DataConfig: validation before work, presets, conversion, derived counts."""

import dataclasses

import pytest

from ptychostab.data.spec import DataConfig, ProbeConfig

# The presets the config group carries (conf/data/*.yaml); they must validate as written.
PRESETS = {
    "grid_lines_n64": dict(N=64, size=392, n_lines=400, nimgs_train=2, nimgs_test=2,
                           nphotons=1e9, set_phi=True),
    "grid_lines_n64_small": dict(N=64, size=392, n_lines=400, nimgs_train=1, nimgs_test=1,
                                 nphotons=1e9, set_phi=True),
    "tiny": dict(N=32, size=96, n_lines=40, nimgs_train=1, nimgs_test=1, outer_offset_train=8,
                 outer_offset_test=20, nphotons=1e9, set_phi=True),
}


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate(name):
    DataConfig(name=name, **PRESETS[name]).validate()


def test_defaults_are_stage_a():
    spec = DataConfig().validate()
    assert (spec.N, spec.size, spec.n_lines, spec.nimgs_train, spec.nimgs_test) == (
        64, 392, 400, 2, 2)
    assert spec.set_phi is True and spec.probe.kind == "defocused_disk"


@pytest.mark.parametrize("N, size, per_train, per_test", [(64, 392, 6889, 1089),
                                                          (128, 392, 4489, 729)])
def test_patch_counts_match_the_reference(N, size, per_train, per_test):
    spec = DataConfig(N=N, size=size)
    assert spec.n_side_train**2 == per_train and spec.n_side_test**2 == per_test
    assert spec.n_train == 2 * per_train and spec.n_test == 2 * per_test


BAD = [
    (dict(N=48), "data.N", "power of two"),
    (dict(N=4), "data.N", ">= 8"),
    (dict(N=64.0), "data.N", "integer"),
    (dict(gridsize=2), "data.gridsize", r"\[1\]"),
    (dict(nimgs_train=0), "data.nimgs_train", ">= 1"),
    (dict(nimgs_test=-1), "data.nimgs_test", ">= 1"),
    (dict(nphotons=0), "data.nphotons", "> 0"),
    (dict(nphotons=-5.0), "data.nphotons", "> 0"),
    (dict(nphotons=float("nan")), "data.nphotons", "finite"),
    (dict(size=32), "data.size", "no N x N patch"),
    (dict(n_lines=0), "data.n_lines", ">= 1"),
    (dict(outer_offset_train=1), "data.outer_offset_train", ">= 2"),
    (dict(outer_offset_test=18), "data.outer_offset_test", "even"),
    (dict(outer_offset_test=200), "data.outer_offset_test", "<= N"),
    (dict(set_phi="yes"), "data.set_phi", "true or false"),
    (dict(noise_seed=-1), "data.noise_seed", ">= 0"),
    (dict(probe=ProbeConfig(kind="gaussian")), "data.probe.kind",
     r"\['defocused_disk', 'ideal_disk', 'npz'\]"),
    (dict(probe=ProbeConfig(kind="npz")), "data.probe.path", "required"),
    (dict(probe=ProbeConfig(kind="npz", path="/nonexistent/p.npz")), "data.probe.path",
     "file not found"),
    (dict(probe=ProbeConfig(radius=0.0)), "data.probe.radius", "> 0"),
    (dict(probe=ProbeConfig(probe_scale=0.0)), "data.probe.probe_scale", "> 0"),
    (dict(probe=ProbeConfig(smoothing_sigma=-1.0)), "data.probe.smoothing_sigma", ">= 0"),
]


@pytest.mark.parametrize("fields, name, allowed", BAD,
                         ids=[f"{b[1]}={list(b[0].values())[0]!r}" for b in BAD])
def test_bad_input_names_the_field_and_what_is_allowed(fields, name, allowed):
    with pytest.raises(ValueError, match=allowed) as err:
        DataConfig(**fields).validate()
    assert name in str(err.value)


def test_from_any_accepts_nested_mappings_and_coerces_ints_for_floats():
    spec = DataConfig.from_any({"N": 32, "size": 96, "nphotons": 1000,
                                "probe": {"kind": "ideal_disk"}})
    assert spec.nphotons == 1000.0 and isinstance(spec.nphotons, float)
    assert spec.probe.kind == "ideal_disk"
    assert DataConfig.from_any(spec) is spec
    assert DataConfig.from_any(spec.to_dict()) == spec


def test_from_any_accepts_omegaconf_and_foreign_dataclasses():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "tiny", **PRESETS["tiny"], "probe": {"radius": 0.2}})
    spec = DataConfig.from_any(cfg).validate()
    assert spec.N == 32 and spec.probe.radius == 0.2

    @dataclasses.dataclass
    class Other:
        N: int = 32
        size: int = 64

    assert DataConfig.from_any(Other()).size == 64


def test_from_any_refuses_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown data field\(s\) \['nphoton'\]"):
        DataConfig.from_any({"nphoton": 1e9})
    with pytest.raises(ValueError, match=r"unknown data.probe field\(s\) \['radus'\]"):
        DataConfig.from_any({"probe": {"radus": 0.2}})
