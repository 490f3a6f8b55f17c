"""The composed config's typed schema: :class:`Choice` enums and one dataclass per group.

Only types live here (the anchor is hydra-submitit-launcher's ``config.py``): the ConfigStore
entries and resolvers are in :mod:`.store`, value checks in :mod:`.validate`. Names
(architecture, clip algorithm, optimizer, scheduler, loss, accelerator) are :class:`Choice`
enums: OmegaConf validates them at compose time, and they compare, hash, print and serialise
exactly like the plain strings they stand for. docs/contracts.md lists every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ptychostab.data.spec import DataConfig


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
    collapse_rel_std: Optional[float] = 1.0e-3  # null disables the check
    collapse_ssim: Optional[float] = 0.5  # null disables the check
    test_inject_nan_step: Optional[int] = None
    test_inject_exception_step: Optional[int] = None


@dataclass
class PathsConfig:
    output_root: str = "outputs"  # runs land in <output_root>/<sweep>/<arm_id>/seed=<k>/
    cache_dir: str = MISSING  # set in train.yaml (env PTYCHOSTAB_CACHE overrides)


@dataclass
class PlanConfig:
    """Dry run / preflight (ptychostab.launch.plan): what to refuse, how to estimate run time."""

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
    # the launcher's wait (hydra_plugins.ptychostab_launcher; ptychostab.launch.job_wait): one
    # squeue + sacct call for every job each poll; a job unknown to both for the grace period
    # (failed calls do not count) is over: missing if it never started, else preempted
    poll_interval_s: float = 30.0
    lost_job_grace_s: float = 300.0


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
    # True: this sweep is outside the study's decision (a reproduction, a probe): the aggregator
    # lists it apart and never puts it in a stage (conf/decision/*.yaml). Run-only.
    outside_study: bool = False
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
