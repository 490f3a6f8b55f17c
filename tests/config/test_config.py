"""Every group option and experiment composes; typos and bad values fail with a message that
names the field and the allowed values."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from ptychostab import config as cfgmod
from ptychostab.cli.plan import build_plan
from ptychostab.data.spec import DataConfig

# Options that cannot run on their own, and the override that completes them.
NEEDS = {("clip", "value"): ["clip.value=0.5"]}
GROUPS = ("data", "arch", "clip", "trainer", "launcher", "arm")
OPTIONS = [(g, o) for g in GROUPS for o in cfgmod.group_options(g)]


def _messages(err: BaseException) -> str:
    """The error and its causes, as Hydra prints them."""
    out = []
    while err is not None:
        out.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(out)


def test_every_group_has_its_options():
    assert set(cfgmod.group_options("data")) == {"grid_lines_n64", "grid_lines_n64_small", "tiny"}
    assert set(cfgmod.group_options("arch")) >= {"hybrid", "stable_hybrid", "layerscale_hybrid",
                                                 "fno"}
    assert set(cfgmod.group_options("clip")) == {"none", "norm", "value", "agc"}
    assert set(cfgmod.group_options("trainer")) == {"default", "smoke"}
    assert set(cfgmod.group_options("launcher")) == {"local", "submitit_local", "slurm"}
    assert set(cfgmod.group_options("arm")) == {"control", "arch_fix", "opt_fix", "control_norm1"}
    assert set(cfgmod.experiment_names()) >= {"stage_a", "clip_sweep", "stage_b", "demo"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes_and_validates(group, option):
    cfg = cfgmod.compose([f"{group}={option}", *NEEDS.get((group, option), [])],
                    return_hydra_config=True)
    if group in ("data", "arch", "trainer"):
        assert str(cfg[group].name if group != "trainer" else option) == option
    if group == "clip":
        assert str(cfg.clip.algorithm) == option


def test_defaults_match_the_contract():
    cfg = cfgmod.compose([])
    assert cfg.seed == 0 and cfg.depth == 4 and cfg.sweep == "default" and cfg.strict is False
    assert cfg.arch.fno_blocks == 4 and str(cfg.arch.name) == "hybrid"
    assert str(cfg.clip.algorithm) == "none" and cfg.clip.value is None
    t = cfg.trainer
    assert (t.max_epochs, t.batch_size, t.lr, str(t.optimizer), str(t.scheduler)) == (
        50, 16, 1e-3, "adam", "none")
    d = cfg.data
    assert (d.N, d.size, d.n_lines, d.nimgs_train, d.nimgs_test, d.nphotons, d.set_phi) == (
        64, 392, 400, 2, 2, 1e9, True)
    assert cfgmod.compose(["clip=norm"]).clip.value == 1.0
    assert cfgmod.compose(["clip=agc"]).clip.value == 0.01
    tiny = cfgmod.compose(["data=tiny"]).data
    assert (tiny.N, tiny.size, tiny.n_lines, tiny.nimgs_train, tiny.outer_offset_test) == (
        32, 96, 40, 1, 20)
    assert cfgmod.compose(["data=grid_lines_n64_small"]).data.nimgs_train == 1
    assert cfgmod.compose(["trainer=smoke"]).trainer.max_epochs == 3


def test_data_schema_is_the_physics_packages_dataclass():
    field = {f.name: f for f in dataclasses.fields(cfgmod.TrainConfig)}["data"]
    assert field.type in (DataConfig, "DataConfig")


def test_depth_and_seed_are_plain_sweepable_ints():
    cfg = cfgmod.compose(["depth=8", "seed=0"])
    assert cfg.arch.fno_blocks == 8 and cfg.seed == 0
    assert cfgmod.compose(["arch.fno_blocks=6"]).arch.fno_blocks == 6  # an explicit value wins


def test_named_arms_set_arch_and_clip():
    pairs = {"control": ("hybrid", "none", None), "arch_fix": ("stable_hybrid", "none", None),
             "opt_fix": ("hybrid", "agc", 0.01), "control_norm1": ("hybrid", "norm", 1.0)}
    for arm, (arch, clip, value) in pairs.items():
        cfg = cfgmod.compose([f"arm={arm}"])
        assert (str(cfg.arch.name), str(cfg.clip.algorithm), cfg.clip.value) == (arch, clip, value)
    # the command line wins over a named arm
    assert str(cfgmod.compose(["arm=control", "arch=fno"]).arch.name) == "fno"


@pytest.mark.parametrize("name", cfgmod.experiment_names())
def test_experiment_composes_every_job(name, tmp_path):
    cfg = cfgmod.compose([f"+experiment={name}"], return_hydra_config=True)
    assert cfgmod.SWEEP_NAME.match(cfg.sweep)
    if name in ("stage_a", "stage_b", "clip_sweep", "demo"):
        assert "seed" in cfg.hydra.sweeper.params
    plan = build_plan([f"+experiment={name}", f"paths.output_root={tmp_path}"], describe=False)
    assert plan.jobs and plan.sweep_dir == tmp_path / cfg.sweep
    if name not in ("stage_a", "stage_b", "clip_sweep"):
        return  # the demos and newer experiments: composing and planning every job is the test
    assert cfg.sweep == name
    expected = {"stage_a": (3, 72, 4), "stage_b": (3, 72, 8), "clip_sweep": (6, 30, 4)}[name]
    assert (len(plan.arms), len(plan.jobs)) == expected[:2]
    assert {a.cfg["arch"]["fno_blocks"] for a in plan.arms.values()} == {expected[2]}
    assert not list(tmp_path.iterdir())  # planning writes nothing by itself


def test_experiment_contents():
    a = cfgmod.compose(["+experiment=stage_a"], return_hydra_config=True)
    assert (a.data.name, a.depth, a.trainer.max_epochs) == ("grid_lines_n64", 4, 50)
    assert a.hydra.sweeper.params.arm == "control,arch_fix,opt_fix"
    assert a.hydra.sweeper.params.seed == "range(24)"
    b = cfgmod.compose(["+experiment=stage_b"], return_hydra_config=True)
    assert (b.depth, b.arch.fno_blocks) == (8, 8)
    c = cfgmod.compose(["+experiment=clip_sweep"], return_hydra_config=True)
    assert str(c.clip.algorithm) == "norm" and str(c.arch.name) == "hybrid"
    assert c.hydra.sweeper.params["clip.value"] == "1,5,10,20,50,100"
    d = cfgmod.compose(["+experiment=demo"], return_hydra_config=True)
    assert (d.data.name, d.arch.hidden_channels, d.arch.n_modes) == ("tiny", 8, 4)
    # a command-line value beats the experiment's
    assert cfgmod.compose(["+experiment=stage_a", "data=tiny"]).data.name == "tiny"


def test_local_example_composes():
    cfg = cfgmod.compose(["local=example"], return_hydra_config=True)
    assert cfg.cluster.partition == "gpu"
    slurm = cfgmod.compose(["launcher=slurm", "cluster.partition=debug"], return_hydra_config=True)
    launcher = OmegaConf.to_container(slurm.hydra.launcher, resolve=True)
    assert launcher["partition"] == "debug"
    assert launcher["_target_"].endswith("PtychoSlurmLauncher")
    assert launcher["setup"][0].startswith("export OMP_NUM_THREADS=")
    assert launcher["max_num_timeout"] == 3 and launcher["timeout_min"] * 60 > launcher[
        "signal_delay_s"]


@pytest.mark.parametrize("overrides,needle", [
    (["arch.hiden_channels=4"], "hiden_channels"),
    (["trainer.lrr=0.1"], "lrr"),
    (["clip.algorithm=agcc"], "agc"),  # OmegaConf lists the allowed values
    (["trainer.optimizer=adamm"], "adamw"),
    (["arch=hybridd"], "stable_hybrid"),  # Hydra lists the options of the group
    (["depth=four"], "depth"),
    (["+experiment=stage_aa"], "stage_a"),
])
def test_typos_fail_at_compose_time_naming_the_key(overrides, needle):
    with pytest.raises(Exception) as info:
        cfgmod.compose(overrides, check=False)
    assert needle in _messages(info.value)


@pytest.mark.parametrize("overrides,needles", [
    (["clip=norm", "clip.value=-1"], ["clip.value=-1.0", "> 0"]),
    (["clip=agc", "clip.value=0"], ["clip.value=0.0"]),
    (["clip=value"], ["clip.value is missing", "clip.algorithm=value"]),
    (["clip.value=3"], ["clip.algorithm=none ignores it"]),
    (["depth=0"], ["depth=0", ">= 1"]),
    (["seed=-1"], ["seed=-1"]),
    (["trainer.lr=0"], ["trainer.lr"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs"]),
    (["data.N=48"], ["data.N", "power of two"]),
    (["cluster.timeout_min=1", "cluster.signal_delay_s=120"], ["cluster.timeout_min=1"]),
    (["sweep=a/b"], ["sweep="]),
])
def test_bad_values_fail_validation_naming_the_field(overrides, needles):
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.compose(overrides)
    for needle in needles:
        assert needle in str(info.value)


def test_validation_reports_every_problem_at_once():
    cfg = cfgmod.compose(["depth=0", "clip=norm", "clip.value=-2", "trainer.lr=-1"], check=False)
    found = cfgmod.problems(cfg)
    assert any(p.startswith("depth=0") for p in found)
    assert any(p.startswith("clip.value=-2.0") for p in found)
    assert any(p.startswith("trainer.lr=-1.0") for p in found)


def test_names_are_enums_at_compose_time_and_plain_strings_for_training():
    cfg = cfgmod.compose(["arm=opt_fix"])
    assert isinstance(cfg.clip.algorithm, cfgmod.ClipAlgorithm)
    assert cfg.clip.algorithm == "agc" and f"{cfg.clip.algorithm}" == "agc"
    assert {"agc": 1}[cfg.clip.algorithm] == 1  # hashes like its string
    plain = cfgmod.to_plain(cfg)
    assert type(plain.clip.algorithm) is str and type(plain.arch.name) is str
    assert plain.arch.fno_blocks == 4  # interpolations resolved
    assert OmegaConf.is_struct(plain)
