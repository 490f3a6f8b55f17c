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

import difflib
import math
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ptychostab.data.spec import DataConfig
from ptychostab.runs import records as _records

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
    stable_hybrid_ls = "stable_hybrid_ls"  # the reference HEAD's block (conf/arch/)
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


class Progress(Choice):
    auto = "auto"
    bar = "bar"
    log = "log"
    none = "none"


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
    progress: Progress = Progress.auto
    log_every_n_steps: Optional[int] = None  # None: every sync point (= sync_every); 0: off


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
    comment: Optional[str] = None  # sbatch --comment
    exclude: Optional[str] = None  # sbatch --exclude (nodes to avoid)
    gpus_per_node: Optional[int] = 1
    cpus_per_task: Optional[int] = 4
    tasks_per_node: int = 1  # one process per job: Lightning must not re-launch itself (no DDP)
    mem_gb: Optional[int] = 32
    timeout_min: int = 240
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint + requeue
    max_num_timeout: int = 3  # requeues after a time-out (preemptions requeue without limit)
    array_parallelism: int = 32
    setup: List[str] = field(default_factory=list)  # shell lines before srun (module load ...)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other #SBATCH


@dataclass
class DiagnosticsConfig:
    """The in-run drift probe (ptychostab.diagnostics.drift); run-only."""

    every_n_epochs: int = 1  # probe after every k-th epoch (and at init, epoch -1); 0: off


@dataclass
class CSVTrackerConfig:
    enabled: bool = True


@dataclass
class TensorBoardTrackerConfig:
    enabled: bool = True


@dataclass
class MLflowTrackerConfig:
    enabled: bool = True
    tracking_uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else <output_root>/mlruns
    experiment_name: Optional[str] = None  # null: the sweep name


@dataclass
class WandbTrackerConfig:
    enabled: bool = True
    project: str = "ptychostab"
    entity: Optional[str] = None
    mode: Optional[str] = None  # null: $WANDB_MODE, else offline


@dataclass
class LoggerConfig:
    """``logger=`` group (conf/logger/): the trackers of every run; an unset entry is off."""

    csv: Optional[CSVTrackerConfig] = None
    tensorboard: Optional[TensorBoardTrackerConfig] = None
    mlflow: Optional[MLflowTrackerConfig] = None
    wandb: Optional[WandbTrackerConfig] = None


@dataclass
class TrainConfig:
    """The primary config (conf/train.yaml). Groups: data, arch, clip, trainer (+ arm,
    launcher, experiment, local). ``seed`` and ``depth`` are plain ints so they sweep."""

    seed: int = 0
    depth: int = 4
    sweep: str = "default"
    strict: bool = False
    profile: str = "default"  # the profile group's label (conf/profile/*.yaml set the values)
    # Final endings a rerun of the sweep trains again (e.g. [oom,exception] after a fix or on
    # a bigger device); allowed: RETRYABLE. Run-only: not part of the arm id.
    retry: List[str] = field(default_factory=list)
    # Seeds of one arm trained in one process (one job, one GPU, one dataset load): the sweep
    # preflight groups the unfinished seeds of each arm into packs of up to `pack` (packs.json).
    # 1: one run per job (unpacked). Run-only: not part of the arm id.
    pack: int = 1
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    failure: FailureConfig = field(default_factory=FailureConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


def register_configs() -> None:
    """Put the schemas and the experiment entries into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    # Only the whole schema, outside any group: the group files (conf/<group>/*.yaml) are
    # merged into its typed nodes, so they are checked against ArchConfig, ClipConfig, ...
    # without a schema entry in the group (which would be offered as an option: arch=base_arch,
    # 'arch=glob(*)', --help).
    cs.store(name="train_schema", node=TrainConfig)
    # `+experiment=<name>` selects experiments/<name>.yaml. Hydra maps a group to a folder of
    # that name under a search-path root; experiments/ is such a root (hydra.searchpath in
    # train.yaml) with its files at the top, so each group entry is a one-line redirect.
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        cs.store(group="experiment", name=path.stem, node={"defaults": [f"/{path.stem}"]},
                 package="_global_")


# --- resolvers -----------------------------------------------------------------------------------
def job_root(root: Any) -> Any:
    """The whole composed config behind a resolver's ``_root_``.

    ``--cfg hydra --resolve`` resolves the ``hydra`` node alone (Hydra drops the job's keys);
    the folders in it (``hydra.run.dir``, ...) are then read from the config Hydra holds."""
    if isinstance(root, DictConfig) and "paths" not in root:
        try:
            from hydra.core.hydra_config import HydraConfig

            held = HydraConfig.instance().cfg
            parent = held.hydra._get_parent() if held is not None else None
            if isinstance(parent, DictConfig) and "paths" in parent:
                return parent
        except Exception:
            pass
    return root


def _job_value(key: str, *, _root_: DictConfig) -> Any:
    """``${job:<key>}``: a key of the job's config, as ``${<key>}`` (see :func:`job_root`)."""
    return OmegaConf.select(job_root(_root_), key, throw_on_missing=True)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("ptychostab_root"):
        OmegaConf.register_new_resolver("ptychostab_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("job"):
        OmegaConf.register_new_resolver("job", _job_value)


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
#: ``retry`` values: the final endings other than ok (docs/contracts.md, status families)
RETRYABLE = (*_records.OTHER_FINAL_KINDS, *_records.INSTABILITY_KINDS)
#: Config groups: a key of the command line that selects an option, not a schema field.
GROUPS = tuple(sorted({p.name for p in CONF_DIR.iterdir() if p.is_dir()} | {"experiment"}))
#: The run folder scheme (hydra.run.dir, hydra.sweep.subdir must end with it).
RUN_FOLDER = "${arm_id:}/seed=${job:seed}"
FOLDER_SCHEME = (
    "ptychostab names every run folder <arm_id>/seed=<seed> under "
    "<paths.output_root>/<sweep>/ (arm_id: the hash of the config that defines the arm), so a "
    "rerun skips finished runs and resumes interrupted ones in place, and the aggregator finds "
    "them; a job number or an override list does not identify a run (it changes with the "
    "grid). Keep the default, or end yours with it, e.g. "
    "'hydra.sweep.subdir=\"mine/" + RUN_FOLDER + "\"' (quoted so); choose where runs go with "
    "paths.output_root=<dir> and sweep=<name>")


# --- the schema as a tree of keys (unknown-key checks) -------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: fall back to the fields' raw types
        import dataclasses

        return {f.name: f.type for f in dataclasses.fields(cls)}


def _node_class(tp: Any) -> type | None:
    """The dataclass a field holds (Optional[...] unwrapped), else None."""
    import dataclasses

    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _open(tp: Any) -> bool:
    """A field that takes any sub-key (a Dict) or items (a List)."""
    if typing.get_origin(tp) is typing.Union:
        return any(_open(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) in (dict, list) or tp in (dict, list, Any)


def unknown_key(key: str, schema: type | None = None) -> str | None:
    """Why ``key`` (dotted) is not a key of the schema, or None when it is. The message names
    the closest valid key and the keys of the node it was looked up in."""
    cls: type | None = schema or TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        assert cls is not None
        hints = _hints(cls)
        node = ".".join(parts[:i])
        if part not in hints:
            names = sorted(hints)
            full = [f"{node}.{n}" if node else n for n in names]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            guess = (f"did you mean {' or '.join((node + '.' + c) if node else c for c in close)}?"
                     if close else "no key is close")
            where = f"'{node}'" if node else "the config"
            return (f"{key}: {where} has no key {part!r}; {guess} Valid keys of "
                    f"{node or 'the config'}: {', '.join(full)}")
        tp = hints[part]
        if _open(tp):
            return None
        sub = _node_class(tp)
        if sub is None:
            if i < len(parts) - 1:
                return (f"{key}: {'.'.join(parts[:i + 1])} is a value, it has no key "
                        f"{parts[i + 1]!r}")
            return None
        cls = sub
    return None


def _is_list_field(key: str) -> bool:
    cls: Any = TrainConfig
    parts = key.split(".")
    for part in parts[:-1]:
        cls = _node_class(_hints(cls).get(part)) if cls is not None else None
    if cls is None:
        return False
    tp = _hints(cls).get(parts[-1])
    if typing.get_origin(tp) is typing.Union:
        return any(typing.get_origin(a) is list for a in typing.get_args(tp))
    return typing.get_origin(tp) is list


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse command-line overrides of keys the schema does not have (``+`` included: Hydra's
    ``+key=value`` adds a key to a typed config without a check), before Hydra composes.
    Group choices (``arch=fno``, ``+experiment=...``, ``hydra/launcher=...``) and ``hydra.*``
    are Hydra's to check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = []
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return  # a syntax error: Hydra reports it with its own message
    for ov in parsed:
        key = ov.key_or_group
        if ov.is_delete() or "/" in key or "@" in key or key.split(".")[0] == "hydra":
            continue
        if key == "local" and not ov.is_sweep_override():
            # `optional local: default` in train.yaml: Hydra silently skips a missing option
            name = ov.value()
            options = sorted(p.stem for p in (CONF_DIR / "local").glob("*.yaml"))
            if isinstance(name, str) and name not in options:
                found.append(f"local={name}: no conf/local/{name}.yaml; options of group "
                             f"local: {', '.join(options)}")
            continue
        if ov.package is not None or (key in GROUPS and "." not in key):
            continue
        problem = unknown_key(key)
        if problem:
            found.append(problem)
        elif ov.is_sweep_override() is False and _is_list_field(key):
            value = ov.value()
            if not isinstance(value, (list, tuple)) and value is not None:
                text = ov.get_value_element_as_str()
                found.append(f"{key}={text}: {key} is a list; write {key}=[{text}]")
    if found:
        raise ConfigError("\n  - ".join(
            [f"unknown config key{'s' if len(found) > 1 else ''} (nothing was run):", *found]))


def _extra_keys(obj: Any, cls: type, prefix: str = "") -> list[str]:
    """Keys of a composed config (or plain dict) that its schema does not declare."""
    out: list[str] = []
    if not isinstance(obj, (dict, DictConfig)):
        return out
    hints = _hints(cls)
    for key in list(obj.keys()):
        name = f"{prefix}{key}"
        if not prefix and key == "hydra":
            continue
        if key not in hints:
            out.append(unknown_key(name) or name)
            continue
        sub = _node_class(hints[key])
        if sub is not None and not _open(hints[key]):
            try:
                child = obj[key]
            except Exception:
                continue
            out.extend(_extra_keys(child, sub, f"{name}."))
    return out


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
    for extra in _extra_keys(cfg, TrainConfig):
        c.add(extra)
    c.integer("seed", 0)
    c.integer("depth", 1, " (spectral blocks of the generator)")
    sweep = c.get("sweep")
    if not isinstance(sweep, str) or not SWEEP_NAME.match(sweep):
        c.add(f"sweep={sweep!r}: must be a folder name of letters, digits, '_', '.', '-'")
    if not c.get("paths.output_root"):
        c.add("paths.output_root is empty: the folder that receives <sweep>/<arm_id>/seed=<k>/")
    c.integer("pack", 1, " (seeds of one arm per job; 1: unpacked)")
    retry = c.get("retry")
    if retry is None or isinstance(retry, str) or not all(isinstance(x, str) for x in retry):
        c.add(f"retry={retry!r}: must be a list of final endings, e.g. retry=[oom,exception]; "
              f"allowed: {', '.join(RETRYABLE)}")
    else:
        for x in retry:
            if x not in RETRYABLE:
                why = (" (ok is never retrained)" if x == _records.OK else
                       " (not final: a rerun resumes or retries it anyway)"
                       if x in _records.INCOMPLETE_KINDS + _records.READ_PROBLEMS else "")
                c.add(f"retry: {x!r} is not a final ending that can be retried{why}; "
                      f"allowed: {', '.join(RETRYABLE)}")

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
    c.choice("trainer.progress", Progress)
    c.integer("diagnostics.every_n_epochs", 0, " (0 turns the drift probe off)")
    trackers = [n for n in ("csv", "tensorboard", "mlflow", "wandb")
                if c.get(f"logger.{n}") is not None and c.get(f"logger.{n}.enabled") is not False]
    if trackers:
        from ptychostab.tracking import MissingTracker, check_available

        try:
            check_available(trackers)
        except MissingTracker as err:
            c.add(f"logger: {err}")
    mode = c.get("logger.wandb.mode") if c.get("logger.wandb") is not None else None
    if mode is not None and mode not in ("online", "offline", "disabled"):
        c.add(f"logger.wandb.mode={mode!r}; allowed: online, offline, disabled (or null: "
              "$WANDB_MODE, else offline)")
    every, sync = c.get("trainer.log_every_n_steps"), c.get("trainer.sync_every")
    if every is not None:
        c.integer("trainer.log_every_n_steps", 0, " (or null: every sync point)")
        if _int(every) and _int(sync) and sync > 0 and every > 0 and every % sync:
            c.add(f"trainer.log_every_n_steps={every} must be a multiple of "
                  f"trainer.sync_every={sync}, or 0 (no per-step logging)")
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
    c.integer("cluster.tasks_per_node", 1)
    if _int(c.get("cluster.tasks_per_node")) and c.get("cluster.tasks_per_node") > 1:
        c.add(f"cluster.tasks_per_node={c.get('cluster.tasks_per_node')}: a run is one process "
              f"(no DDP here); allowed: 1")

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


def launcher_problems(cfg: Any) -> list[str]:
    """Problems of the launcher settings as the launcher will read them (``hydra.launcher``,
    whether they came from ``cluster.*``, a site file or ``hydra.launcher.*`` overrides)."""
    out: list[str] = []
    node = OmegaConf.select(cfg, "hydra.launcher", default=None)
    if not isinstance(node, DictConfig):
        return out
    try:
        launcher = OmegaConf.to_container(node, resolve=True)
    except Exception as err:
        return [f"hydra.launcher cannot be resolved: {err}"]
    assert isinstance(launcher, dict)
    tmin, delay = launcher.get("timeout_min"), launcher.get("signal_delay_s")
    if _int(tmin) and _int(delay) and tmin * 60 <= delay:
        out.append(f"hydra.launcher.timeout_min={tmin} must exceed hydra.launcher.signal_delay_s="
                   f"{delay} s (set by cluster.timeout_min / cluster.signal_delay_s, a site "
                   f"launcher file or hydra.launcher.*): the pre-timeout signal would come "
                   f"before the job starts")
    tasks = launcher.get("tasks_per_node")
    if _int(tasks) and tasks != 1:
        out.append(f"hydra.launcher.tasks_per_node={tasks}: a run is one process; allowed: 1")
    return out


def folder_problems(cfg: Any, *, multirun: bool) -> list[str]:
    """``hydra.run.dir`` / ``hydra.sweep.subdir`` must keep ptychostab's run-folder scheme."""
    key = "hydra.sweep.subdir" if multirun else "hydra.run.dir"
    node = OmegaConf.select(cfg, key.rsplit(".", 1)[0], default=None)
    if not isinstance(node, DictConfig):
        return []
    raw = OmegaConf.to_container(node, resolve=False).get(key.rsplit(".", 1)[1])
    if not isinstance(raw, str):
        return []
    if raw.replace("${seed}", "${job:seed}").rstrip("/").endswith(RUN_FOLDER):
        return []
    return [f"{key}={raw}: {FOLDER_SCHEME}"]


#: The only run-folder form allowed with ``pack > 1`` (hydra.sweep.subdir).
PACKED_SUBDIR = RUN_FOLDER
PACK_SCHEME = (
    "with pack > 1 one job trains several seeds of an arm, each in its own folder "
    "<paths.output_root>/<sweep>/<arm_id>/seed=<seed>; the preflight names those folders in "
    "packs.json, the pack's leader writes into them, and reruns regroup the unfinished seeds "
    "by them, so the seeds of a pack stay apart only under the default scheme. Drop the "
    "hydra.sweep.subdir override (choose where runs go with paths.output_root=<dir> and "
    "sweep=<name>), or run with pack=1")


def pack_problems(cfg: Any) -> list[str]:
    """With ``pack > 1`` a sweep keeps the default ``hydra.sweep.subdir`` (see PACK_SCHEME)."""
    pack = OmegaConf.select(cfg, "pack", default=1) if isinstance(cfg, DictConfig) else (
        _select(cfg, "pack") or 1)
    if not _int(pack) or pack <= 1:
        return []
    node = OmegaConf.select(cfg, "hydra.sweep", default=None)
    if not isinstance(node, DictConfig):
        return []
    raw = OmegaConf.to_container(node, resolve=False).get("subdir")
    if not isinstance(raw, str):
        return []
    if raw.replace("${seed}", "${job:seed}").strip("/") == PACKED_SUBDIR:
        return []
    return [f"hydra.sweep.subdir={raw} with pack={pack}: {PACK_SCHEME}"]


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

    check_overrides(overrides)
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
