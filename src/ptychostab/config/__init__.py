"""The composed config: typed schema, ConfigStore and resolvers, override checks, validation
and composition. Importing this package registers the schema and the resolvers with Hydra.

======================  =================================================================
:mod:`.schema`          :class:`Choice` enums and one dataclass per config group
:mod:`.store`           ConfigStore entries and the ``ptychostab_root``/``job``/``arm_id``
                        resolvers
:mod:`.overrides`       the schema as a tree of keys: unknown-key messages, override check
:mod:`.validate`        :func:`validate` / :func:`problems`: values a type cannot express
:mod:`.compose`         :func:`compose` outside a Hydra app, :func:`to_plain`
======================  =================================================================

Two layers catch a bad config before any job starts: composition (OmegaConf against the
dataclasses: a misspelt key, a wrong type, an unknown name fails while the config is
composed, naming the key and the allowed values) and :func:`validate` (values and
combinations a type cannot express, every problem at once).
"""

from ptychostab.config.compose import (
    CONFIG_NAME,
    compose,
    experiment_names,
    group_options,
    to_plain,
)
from ptychostab.config.errors import ConfigError
from ptychostab.config.overrides import GROUPS, check_overrides, unknown_key
from ptychostab.config.schema import (
    Accelerator,
    ArchConfig,
    ArchName,
    Choice,
    ClipAlgorithm,
    ClipConfig,
    ClusterConfig,
    CSVTrackerConfig,
    DiagnosticsConfig,
    FailureConfig,
    LoggerConfig,
    LossName,
    MLflowTrackerConfig,
    OptimizerName,
    PathsConfig,
    PlanConfig,
    Progress,
    SchedulerName,
    TensorBoardTrackerConfig,
    TrainConfig,
    TrainerConfig,
    WandbTrackerConfig,
)
from ptychostab.config.store import job_root, register, register_configs
from ptychostab.config.validate import (
    FOLDER_SCHEME,
    PACK_SCHEME,
    PACKED_SUBDIR,
    RETRYABLE,
    RUN_FOLDER,
    SWEEP_NAME,
    folder_problems,
    launcher_problems,
    pack_problems,
    problems,
    validate,
)
from ptychostab.paths import CONF_DIR, EXPERIMENTS_DIR, REPO_ROOT

register()

__all__ = [
    "CONFIG_NAME", "CONF_DIR", "EXPERIMENTS_DIR", "FOLDER_SCHEME", "GROUPS", "PACKED_SUBDIR",
    "PACK_SCHEME", "REPO_ROOT", "RETRYABLE", "RUN_FOLDER", "SWEEP_NAME", "Accelerator",
    "ArchConfig", "ArchName", "CSVTrackerConfig", "Choice", "ClipAlgorithm", "ClipConfig",
    "ClusterConfig", "ConfigError", "DiagnosticsConfig", "FailureConfig", "LoggerConfig",
    "LossName", "MLflowTrackerConfig", "OptimizerName", "PathsConfig", "PlanConfig", "Progress",
    "SchedulerName", "TensorBoardTrackerConfig", "TrainConfig", "TrainerConfig",
    "WandbTrackerConfig", "check_overrides", "compose", "experiment_names", "folder_problems",
    "group_options", "job_root", "launcher_problems", "pack_problems", "problems", "register",
    "register_configs", "to_plain", "unknown_key", "validate",
]
