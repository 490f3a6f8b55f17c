"""Typed schemas of the composed config, registered in Hydra's ConfigStore, and :func:`validate`.

Two layers catch a bad config before any job starts:

1. Composition (Hydra/OmegaConf, against the dataclasses below): a misspelt key
   (``arch.hiden_channels=8``), a wrong type (``depth=four``) or an unknown name
   (``clip.algorithm=agcc``, ``trainer.optimizer=adamm``) fails while the config is composed,
   with OmegaConf's message naming the key and the allowed values.
2. :func:`validate` checks values and combinations that a type cannot express (a negative or
   missing clip value, ``depth=0``, a clip value given to ``clip=none``, ...). It runs inside the
   ``arm_id`` resolver that names the run folder, in the sweep preflight for every job, and in
   the dry run; every problem is reported at once, each naming the field and what is allowed.

Names (architecture, clip algorithm, optimizer, scheduler, loss, accelerator) are
:class:`Choice` enums: OmegaConf validates them at compose time, and they compare, hash, print
and serialise exactly like the plain strings they stand for. :func:`to_plain` turns a composed
config into plain containers (real ``str``) before it reaches training code.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ptychostab.data.spec import DataConfig

# --- where the project lives ---------------------------------------------------------------------
# conf/ and experiments/ sit at the repository root, next to src/ (an editable checkout is the
# supported install). PTYCHOSTAB_ROOT overrides; it is exported so that Hydra's search path
# (`${oc.env:PTYCHOSTAB_ROOT,.}/experiments`) resolves the same in submitit/SLURM workers.
REPO_ROOT = Path(os.environ.get("PTYCHOSTAB_ROOT") or Path(__file__).resolve().parents[2])
os.environ.setdefault("PTYCHOSTAB_ROOT", str(REPO_ROOT))
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS_DIR = REPO_ROOT / "experiments"
CONFIG_NAME = "train"


class ConfigError(ValueError):
    """A composed config that cannot run; the message lists every problem found."""


class Choice(str, Enum):
    """A named option: validated by OmegaConf at compose time, a plain string everywhere else."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def names(cls) -> list[str]:
        return [m.value for m in cls]


class ArchName(Choice):
    hybrid = "hybrid"
    stable_hybrid = "stable_hybrid"
    layerscale_hybrid = "layerscale_hybrid"
    fno = "fno"


class ClipAlgorithm(Choice):
    none = "none"
    norm = "norm"
    value = "value"
    agc = "agc"


class OptimizerName(Choice):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class SchedulerName(Choice):
    none = "none"
    cosine = "cosine"
    plateau = "plateau"
    exponential = "exponential"


class LossName(Choice):
    mae = "mae"
    poisson = "poisson"


class Accelerator(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# --- schemas (one per group; docs/contracts.md lists every field) --------------------------------
@dataclass
class ArchConfig:
    """Generator knobs, passed to ``ptychostab.models.build_generator(**arch)``."""

    name: ArchName = ArchName.hybrid
    hidden_channels: int = 32
    n_modes: int = 12
    fno_blocks: int = "${depth}"  # type: ignore[assignment]  # the top-level depth, sweepable
    corners: int = 2  # 2 canonical two-corner modes; 1 = the reference's one-corner fallback
    max_hidden_channels: Optional[int] = None
    max_levels: Optional[int] = None
    levels: Optional[int] = None
    gamma_init: float = 0.0
    layerscale_init: Optional[float] = None
    fno_cnn_blocks: int = 2


@dataclass
class ClipConfig:
    algorithm: ClipAlgorithm = ClipAlgorithm.none
    value: Optional[float] = None  # norm/value threshold, or the AGC factor lambda
    agc_eps: float = 1e-3
    agc_exclude: List[str] = field(default_factory=lambda: ["head"])
    agc_unitwise: bool = True


@dataclass
class TrainerConfig:
    max_epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: OptimizerName = OptimizerName.adam
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: SchedulerName = SchedulerName.none
    warmup_epochs: int = 0
    lr_min_ratio: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_min_lr: float = 5e-5
    exp_gamma: float = 0.95
    loss: LossName = LossName.mae
    accelerator: Accelerator = Accelerator.auto
    tf32: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    sync_every: int = 50
    eval_batch_size: int = 128
    max_data_on_device_gb: float = 8.0


@dataclass
class FailureConfig:
    loss_factor: float = 100.0
    grad_norm_bound: float = 1.0e6
    patience_steps: int = 50
    collapse_rel_std: float = 1.0e-3
    collapse_ssim: float = 0.5
    test_inject_nan_step: Optional[int] = None
    test_inject_exception_step: Optional[int] = None


@dataclass
class PathsConfig:
    output_root: str = "outputs"  # runs land in <output_root>/<sweep>/<arm_id>/seed=<k>/
    cache_dir: str = MISSING  # set in train.yaml (env PTYCHOSTAB_CACHE overrides)


@dataclass
class PlanConfig:
    """Dry run / preflight (ptychostab.sweep.plan): what to refuse, how to estimate run time."""

    max_memory_gb: Optional[float] = 70.0  # refuse arms whose training-memory estimate exceeds it
    # Per-step cost model used when the sweep has no measured epochs yet (history.csv):
    # step_s = step_overhead_s + training_memory_bytes / (gb_per_s * 1e9). A crude,
    # bandwidth-bound guess; measured epoch times replace it as soon as any run has one.
    step_overhead_s: float = 0.01
    gb_per_s: float = 100.0
    parallel_jobs: int = 1  # jobs running at once, for the wall-clock total (array_parallelism)


@dataclass
class ClusterConfig:
    """Launcher resources, read by conf/launcher/{submitit_local,slurm}.yaml. Site values
    (partition, account, qos, setup lines) belong in the git-ignored conf/local/default.yaml."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    gpus_per_node: Optional[int] = 1
    cpus_per_task: Optional[int] = 4
    mem_gb: Optional[int] = 32
    timeout_min: int = 240
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint + requeue
    max_num_timeout: int = 3  # requeues after a time-out (preemptions requeue without limit)
    array_parallelism: int = 32
    setup: List[str] = field(default_factory=list)  # shell lines before srun (module load ...)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other #SBATCH


@dataclass
class TrainConfig:
    """The primary config (conf/train.yaml). Groups: data, arch, clip, trainer (+ arm,
    launcher, experiment, local). ``seed`` and ``depth`` are plain ints so they sweep."""

    seed: int = 0
    depth: int = 4
    sweep: str = "default"
    strict: bool = False
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def register_configs() -> None:
    """Put the schemas and the experiment entries into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="arch", name="base_arch", node=ArchConfig)
    cs.store(group="clip", name="base_clip", node=ClipConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    # `+experiment=<name>` selects experiments/<name>.yaml. Hydra maps a group to a folder of
    # that name under a search-path root; experiments/ is such a root (hydra.searchpath in
    # train.yaml) with its files at the top, so each group entry is a one-line redirect.
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        cs.store(group="experiment", name=path.stem, node={"defaults": [f"/{path.stem}"]},
                 package="_global_")


# --- resolvers -----------------------------------------------------------------------------------
def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("ptychostab_root"):
        OmegaConf.register_new_resolver("ptychostab_root", lambda: str(REPO_ROOT))


# --- conversion ----------------------------------------------------------------------------------
def to_plain(cfg: DictConfig) -> DictConfig:
    """Resolved copy with plain ``str`` names (no enums), struct mode on: what training reads.
    The ``hydra`` node, if present, is dropped."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    plain = OmegaConf.create(_escape(container))
    OmegaConf.set_struct(plain, True)
    return plain


def _escape(obj: Any) -> Any:
    """Resolved strings that look like interpolations (a shell ``${VAR}``) stay literal."""
    if isinstance(obj, str):
        return obj.replace("${", "\\${")
    if isinstance(obj, dict):
        return {k: _escape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_escape(v) for v in obj]
    return obj


# --- validation ----------------------------------------------------------------------------------
SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key, throw_on_missing=False) if isinstance(
            self.cfg, DictConfig) else _select(self.cfg, key)

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def integer(self, key: str, low: int, what: str = "") -> None:
        v = self.get(key)
        if not _int(v) or v < low:
            self.add(f"{key}={v!r}: must be an integer >= {low}{what}")

    def opt_integer(self, key: str, low: int, what: str = "") -> None:
        if self.get(key) is not None:
            self.integer(key, low, what + " (or null)")

    def number(self, key: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, what: str = "") -> None:
        v = self.get(key)
        ok = _num(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
        if not ok:
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
            rng = " and ".join(x for x in (lo, hi) if x)
            self.add(f"{key}={v!r}: must be a finite number{' ' + rng if rng else ''}{what}")

    def choice(self, key: str, enum: type[Choice]) -> None:
        v = self.get(key)
        if str(v) not in enum.names():
            self.add(f"{key}={v!r}: unknown; allowed: {', '.join(enum.names())}")


def _select(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def problems(cfg: Any) -> list[str]:
    """Every problem of a composed config (DictConfig or plain dict), [] when it can run."""
    c = _Checker(cfg)
    c.integer("seed", 0)
    c.integer("depth", 1, " (spectral blocks of the generator)")
    sweep = c.get("sweep")
    if not isinstance(sweep, str) or not SWEEP_NAME.match(sweep):
        c.add(f"sweep={sweep!r}: must be a folder name of letters, digits, '_', '.', '-'")
    if not c.get("paths.output_root"):
        c.add("paths.output_root is empty: the folder that receives <sweep>/<arm_id>/seed=<k>/")

    # arch
    c.choice("arch.name", ArchName)
    c.integer("arch.fno_blocks", 1, " (spectral blocks; defaults to ${depth})")
    c.integer("arch.hidden_channels", 1)
    c.integer("arch.n_modes", 1)
    if c.get("arch.corners") not in (1, 2):
        c.add(f"arch.corners={c.get('arch.corners')!r}: allowed: 1 (reference), 2 (canonical)")
    hidden, cap = c.get("arch.hidden_channels"), c.get("arch.max_hidden_channels")
    if cap is not None and (not _int(cap) or (_int(hidden) and cap < hidden)):
        c.add(f"arch.max_hidden_channels={cap!r}: must be null or an integer >= "
              f"arch.hidden_channels={hidden!r}")
    c.opt_integer("arch.max_levels", 1)
    c.opt_integer("arch.levels", 1)
    c.number("arch.gamma_init")
    if c.get("arch.layerscale_init") is not None:
        c.number("arch.layerscale_init", low=0, low_open=True, what=" (or null)")
    c.integer("arch.fno_cnn_blocks", 0)

    # clip
    c.choice("clip.algorithm", ClipAlgorithm)
    algo, value = str(c.get("clip.algorithm")), c.get("clip.value")
    meaning = {"norm": "the global grad-norm threshold", "value": "the per-element bound",
               "agc": "the AGC clip factor lambda, typically 0.01-0.1"}
    if algo == "none":
        if value is not None:
            c.add(f"clip.value={value!r} is set but clip.algorithm=none ignores it: drop "
                  f"clip.value or choose clip=norm|value|agc")
    elif algo in meaning:
        if value is None:
            c.add(f"clip.value is missing: clip.algorithm={algo} needs a value > 0 "
                  f"({meaning[algo]})")
        else:
            c.number("clip.value", low=0, low_open=True, what=f" ({meaning[algo]})")
    c.number("clip.agc_eps", low=0, low_open=True)
    exclude = c.get("clip.agc_exclude")
    if exclude is None or isinstance(exclude, str) or not all(isinstance(x, str) for x in exclude):
        c.add(f"clip.agc_exclude={exclude!r}: must be a list of submodule names, e.g. [head]")

    # trainer
    c.integer("trainer.max_epochs", 1)
    c.integer("trainer.batch_size", 1)
    c.number("trainer.lr", low=0, low_open=True)
    c.choice("trainer.optimizer", OptimizerName)
    c.number("trainer.weight_decay", low=0)
    c.number("trainer.momentum", low=0, high=1, high_open=True)
    betas = c.get("trainer.betas")
    if betas is None or len(betas) != 2 or not all(_num(b) and 0 <= b < 1 for b in betas):
        c.add(f"trainer.betas={_listish(betas)}: must be two numbers in [0, 1)")
    c.choice("trainer.scheduler", SchedulerName)
    c.integer("trainer.warmup_epochs", 0)
    epochs, warm = c.get("trainer.max_epochs"), c.get("trainer.warmup_epochs")
    if _int(epochs) and _int(warm) and warm >= epochs > 0 and warm > 0:
        c.add(f"trainer.warmup_epochs={warm} must be < trainer.max_epochs={epochs}")
    c.number("trainer.lr_min_ratio", low=0, high=1, low_open=True)
    c.number("trainer.plateau_factor", low=0, high=1, low_open=True, high_open=True)
    c.integer("trainer.plateau_patience", 0)
    c.number("trainer.plateau_min_lr", low=0)
    c.number("trainer.exp_gamma", low=0, high=1, low_open=True)
    c.choice("trainer.loss", LossName)
    c.choice("trainer.accelerator", Accelerator)
    if c.get("trainer.cuda_graphs") and str(c.get("trainer.accelerator")) == "cpu":
        c.add("trainer.cuda_graphs=true needs CUDA but trainer.accelerator=cpu")
    c.integer("trainer.sync_every", 1)
    c.integer("trainer.eval_batch_size", 1)
    c.number("trainer.max_data_on_device_gb", low=0)

    # failure thresholds
    c.number("failure.loss_factor", low=1, low_open=True)
    c.number("failure.grad_norm_bound", low=0, low_open=True)
    c.integer("failure.patience_steps", 1)
    c.number("failure.collapse_rel_std", low=0)
    c.number("failure.collapse_ssim", low=0, high=1)
    c.opt_integer("failure.test_inject_nan_step", 0)
    c.opt_integer("failure.test_inject_exception_step", 0)

    # plan + cluster
    if c.get("plan.max_memory_gb") is not None:
        c.number("plan.max_memory_gb", low=0, low_open=True, what=" (or null: no limit)")
    c.number("plan.step_overhead_s", low=0)
    c.number("plan.gb_per_s", low=0, low_open=True)
    c.integer("plan.parallel_jobs", 1)
    c.integer("cluster.timeout_min", 1)
    c.integer("cluster.signal_delay_s", 0)
    c.integer("cluster.max_num_timeout", 0)
    c.integer("cluster.array_parallelism", 1)
    tmin, delay = c.get("cluster.timeout_min"), c.get("cluster.signal_delay_s")
    if _int(tmin) and _int(delay) and tmin * 60 <= delay:
        c.add(f"cluster.timeout_min={tmin} must exceed cluster.signal_delay_s={delay} s: the "
              f"pre-timeout signal would come before the job starts (submitit then kills it as "
              f"'timed-out and not checkpointable')")
    for key in ("cluster.gpus_per_node", "cluster.cpus_per_task", "cluster.mem_gb"):
        c.opt_integer(key, 0 if key.endswith("gpus_per_node") else 1)

    # data: the physics package owns these checks (DataConfig.validate names the field)
    data = c.get("data")
    if data is not None:
        try:
            spec = OmegaConf.to_container(data, resolve=True, enum_to_str=True) if isinstance(
                data, DictConfig) else data
            DataConfig.from_any(spec).validate()
        except (ValueError, TypeError) as err:
            c.add(str(err))
    return c.problems


def _listish(v: Any) -> str:
    try:
        return str(list(v))
    except TypeError:
        return repr(v)


def validate(cfg: Any, *, where: str = "") -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (nothing when it can run)."""
    found = problems(cfg)
    if found:
        head = f"invalid config{' for ' + where if where else ''} ({len(found)} problem"
        head += "s):" if len(found) > 1 else "):"
        raise ConfigError("\n  - ".join([head, *found]))


# --- composing outside a Hydra app (tests, notebooks, the dry run) -------------------------------
def compose(overrides: Sequence[str] = (), *, check: bool = True,
            return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` (single-run semantics) and validate it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        cfg = hydra_compose(CONFIG_NAME, overrides=list(overrides),
                            return_hydra_config=return_hydra_config)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3",
                                   job_name=CONFIG_NAME):
            cfg = hydra_compose(CONFIG_NAME, overrides=list(overrides),
                                return_hydra_config=return_hydra_config)
    if check:
        validate(cfg)
    return cfg


def group_options(group: str) -> list[str]:
    """The YAML options of a config group in conf/ (``local`` lists only committed files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


_register_resolvers()
register_configs()
# The run-folder resolver (${arm_id:}) lives with the identity rules.
from ptychostab.sweep import identity as _identity  # noqa: E402,F401  (registers ${arm_id:})
