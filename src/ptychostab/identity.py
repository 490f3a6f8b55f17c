"""Who a run is: ``arm_id``, the readable arm label, the arm dict and the run folder.

A run lives in ``<paths.output_root>/<sweep>/<arm_id>/seed=<seed>/``. ``arm_id`` is
``<label>-<hash>``: the label is for people (``hybrid_none_d4``, ``hybrid_agc0.01_d4``), the
hash is the first 10 hex digits of the SHA-1 of the *resolved* experiment-defining config, so:

- it is stable under override order, spelling (``clip.value=5`` vs ``5.0``) and route
  (``arm=control`` composes the same config as ``arch=hybrid clip=none``, hence the same id);
- it changes when anything that can change a result changes (data, model, clipping,
  optimisation, failure thresholds, depth).

What enters the hash: the top-level nodes in :data:`IDENTITY_KEYS`, minus the run-only leaves
in :data:`RUN_ONLY_LEAVES`. Everything else is run-only by construction: ``seed`` (a grid axis
inside the arm), ``sweep`` (the folder above), ``strict``, ``retry`` (which endings a rerun
trains again), ``pack`` (how many seeds share one job), ``outside_study`` (the sweep stays out
of the decision), ``paths``, ``plan``, ``cluster``
(launcher resources) and ``hydra``. tests/config/test_identity.py fails when a top-level key is
added to the schema without being classified here.

The stage a sweep belongs to (``A``, ``B``, ``clip`` or ""), by the decision rule's sweep names
and depths, is named here too (:func:`stage_name`), so that a run's trackers can tag it without
importing the analysis; :func:`ptychostab.analysis.rule.stage_of` applies it to a validated rule.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ptychostab.paths import DEFAULT_RULE


def _is_dictconfig(obj: Any) -> bool:
    """An OmegaConf ``DictConfig`` (omegaconf is imported only by who made one: the post-hoc
    side, which imports this module for its key lists, stays free of it)."""
    omegaconf = sys.modules.get("omegaconf")
    return omegaconf is not None and isinstance(obj, omegaconf.DictConfig)

HASH_DIGITS = 10
IDENTITY_KEYS = ("data", "arch", "clip", "trainer", "failure", "depth")
RUN_ONLY_TOP = ("seed", "sweep", "strict", "profile", "retry", "pack", "outside_study", "paths",
                "plan", "cluster", "logger", "diagnostics")
# Leaves that do not change what is learnt, only how fast or where it runs / what it is called.
RUN_ONLY_LEAVES = (
    "data.name",  # a preset's label; the data are defined by the other data fields
    "trainer.accelerator",  # where it runs (recorded in the manifest)
    "trainer.sync_every",  # how often device-side monitors are read
    "trainer.eval_batch_size",  # evaluation chunking
    "trainer.max_data_on_device_gb",  # data placement
    "trainer.compile",  # torch.compile of the same network
    "trainer.cuda_graphs",  # CUDA-graph capture of the same step
    "trainer.tf32",  # CUDA matmul precision (recorded in the manifest)
    "trainer.progress",  # how progress is shown
    "trainer.log_every_n_steps",  # how often per-step values are logged
)
# Override keys that never describe an arm (the arm dict leaves them out).
_NOT_ARM_OVERRIDES = tuple(k for k in RUN_ONLY_TOP if k != "profile") + (
    "hydra", "experiment", "local", "launcher")
# Override keys already represented by the arm dict's base fields.
_COVERED = {"arch": "arch", "arch.name": "arch", "clip": "clip", "clip.algorithm": "clip",
            "clip.value": "clip_value", "depth": "depth", "arch.fno_blocks": "depth"}


def _container(cfg: Any) -> dict:
    if _is_dictconfig(cfg):
        from omegaconf import OmegaConf

        out = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    else:
        out = json.loads(json.dumps(cfg, default=str))
    assert isinstance(out, dict)
    return out


def identity_config(cfg: Any) -> dict:
    """The part of a composed config that defines an arm (what :func:`arm_id` hashes)."""
    full = _container(cfg)
    ident = {k: full[k] for k in IDENTITY_KEYS if k in full}
    for leaf in RUN_ONLY_LEAVES:
        node, *rest = leaf.split(".")
        parent = ident.get(node)
        for part in rest[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(rest[-1], None)
    return ident


def arm_hash(cfg: Any, digits: int = HASH_DIGITS) -> str:
    """The first ``digits`` hex digits of the SHA-1 of :func:`identity_config` (the arm's
    identity; the whole resolved config's digest is ``runs.environment.config_digest``)."""
    blob = json.dumps(identity_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:digits]


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def arm_label(cfg: Any) -> str:
    """``<arch>_<clip><value>_d<blocks>``, e.g. ``hybrid_none_d4``, ``hybrid_agc0.01_d4``."""
    c = _container(cfg)
    clip = str(c["clip"]["algorithm"])
    if clip != "none" and c["clip"].get("value") is not None:
        clip += _fmt(c["clip"]["value"])
    return f"{c['arch']['name']}_{clip}_d{c['arch']['fno_blocks']}"


def arm_id(cfg: Any) -> str:
    """``<label>-<hash>`` of a composed config (seed and run-only keys excluded)."""
    return f"{arm_label(cfg)}-{arm_hash(cfg)}"


def _override_key_value(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def arm_dict(cfg: Any, overrides: Sequence[str] = ()) -> dict:
    """The arm as columns: label, arch, clip, clip_value, depth, plus every arm-defining
    override key (swept or fixed, e.g. ``arm``, ``data``, ``trainer.lr``) with its value."""
    c = _container(cfg)
    arm: dict[str, Any] = {
        "label": arm_label(cfg),
        "arch": str(c["arch"]["name"]),
        "clip": str(c["clip"]["algorithm"]),
        "clip_value": c["clip"].get("value"),
        "depth": c["arch"]["fno_blocks"],
    }
    profile = c.get("profile")
    if profile is not None and str(profile) != "default":
        arm["profile"] = str(profile)  # from the config: the same whichever route chose it
    for text in overrides:
        key, value = _override_key_value(text)
        top = key.split(".")[0].split("@")[0]
        if not key or top in _NOT_ARM_OVERRIDES or key in _COVERED or key.startswith("hydra"):
            continue
        if top == "profile":  # a route to knob values, shown above from the config
            continue
        if key in RUN_ONLY_LEAVES:
            continue
        leaf = (
            sys.modules["omegaconf"].OmegaConf.select(cfg, key, default=None)
            if _is_dictconfig(cfg) else None)
        if _is_dictconfig(leaf) or leaf is None:
            arm[key] = value  # a group choice (data=tiny, arm=control) or a value not in cfg
        else:
            arm[key] = str(leaf.value) if isinstance(leaf, enum.Enum) else leaf
    return arm


def run_dir(cfg: Any) -> Path:
    """``<output_root>/<sweep>/<arm_id>/seed=<seed>`` (absolute)."""
    c = cfg if isinstance(cfg, Mapping) or _is_dictconfig(cfg) else _container(cfg)
    root = Path(str(c["paths"]["output_root"])).expanduser()
    return (root / str(c["sweep"]) / arm_id(cfg) / f"seed={int(c['seed'])}").absolute()


def sweep_dir(cfg: Any) -> Path:
    return (Path(str(cfg["paths"]["output_root"])).expanduser() / str(cfg["sweep"])).absolute()


# --- the stage a sweep belongs to ------------------------------------------------------------
CLIP_STAGE = "clip"  # the stage tag of the clip sweep's runs (in no stage of the decision rule)
OUTSIDE_STAGE = "outside"  # the stage tag of sweeps declared outside the study (outside_study)


def _norm(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        return "none" if text in ("", "null") else text


def values_match(a: Any, b: Any) -> bool:
    """Equal as numbers when both read as numbers, else as lower-case text (null = "none")."""
    return _norm(a) == _norm(b)


def stage_name(sweep: str | None, depth: Any, clip_contains: str | None,
               stages: Mapping[str, tuple[str | None, Any]], *, outside: bool = False) -> str:
    """``"outside"`` for a sweep declared outside the study (never in a stage), ``"clip"`` for
    the clip sweep (name contains ``clip_contains``), a stage by sweep name (contains the
    stage's text), else by depth; else ``""``. ``stages``: stage -> ``(sweep_contains,
    depth)`` in the decision rule's order."""
    if outside:
        return OUTSIDE_STAGE
    name = (sweep or "").lower()
    if clip_contains and clip_contains.lower() in name:
        return CLIP_STAGE
    for stage, (contains, _) in stages.items():
        if contains and contains.lower() in name:
            return stage
    for stage, (_, stage_depth) in stages.items():
        if stage_depth is not None and values_match(depth, stage_depth):
            return stage
    return ""


def stage_from_rule_file(sweep: str | None, depth: Any, rule_file: str | Path = DEFAULT_RULE,
                         *, outside: bool = False) -> str:
    """:func:`stage_name` by a decision-rule YAML file's ``clip_sweep`` and ``stages`` (read
    as they are: a run names its stage without the analysis package that validates rules)."""
    with open(rule_file, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    stages = {str(k): (v.get("sweep_contains"), v.get("depth"))
              for k, v in data["stages"].items()}
    return stage_name(sweep, depth, data["clip_sweep"].get("sweep_contains"), stages,
                      outside=outside)
