"""Composing ``conf/train.yaml`` outside a Hydra app (tests, notebooks, the dry run), and the
plain-container form that training code reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptychostab.config.overrides import check_overrides
from ptychostab.config.validate import validate
from ptychostab.paths import CONF_DIR, EXPERIMENTS_DIR

CONFIG_NAME = "train"


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
