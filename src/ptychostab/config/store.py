"""Hydra's ConfigStore entries (the schema, ``+experiment=<name>``) and our resolvers.

Resolvers: ``${ptychostab_root:}``, ``${job:<key>}`` and ``${arm_id:}`` (the run folder's
name; resolving it validates the whole config, so an impossible config fails before any
folder exists). Importing :mod:`ptychostab.config` registers all of them once.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ptychostab import identity
from ptychostab.config.schema import TrainConfig
from ptychostab.config.validate import validate
from ptychostab.paths import EXPERIMENTS_DIR, REPO_ROOT


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




def _resolve_arm_id(*, _root_: DictConfig) -> str:
    """``${arm_id:}``, used by ``hydra.run.dir`` / ``hydra.sweep.subdir``.

    Validates first: Hydra resolves the run folder before creating it, so an impossible config
    (negative clip value, depth 0, ...) fails before any folder exists."""
    full = job_root(_root_)  # the whole config, also under --cfg hydra --resolve
    root = OmegaConf.masked_copy(full, [k for k in full.keys() if k != "hydra"])
    validate(root)
    return identity.arm_id(root)


def register() -> None:
    """Register the resolvers and the ConfigStore entries (idempotent)."""
    _register_resolvers()
    if not OmegaConf.has_resolver("arm_id"):
        OmegaConf.register_new_resolver("arm_id", _resolve_arm_id)
    register_configs()
