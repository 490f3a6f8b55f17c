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
trains again), ``pack`` (how many seeds share one job), ``paths``, ``plan``, ``cluster``
(launcher resources) and ``hydra``. tests/sweep/test_identity.py fails when a top-level key is
added to the schema without being classified here.
"""

from __future__ import annotations

import enum
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

HASH_DIGITS = 10
IDENTITY_KEYS = ("data", "arch", "clip", "trainer", "failure", "depth")
RUN_ONLY_TOP = ("seed", "sweep", "strict", "profile", "retry", "pack", "paths", "plan",
                "cluster", "logger", "diagnostics")
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
    if isinstance(cfg, DictConfig):
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
        leaf = OmegaConf.select(cfg, key, default=None) if isinstance(cfg, DictConfig) else None
        if isinstance(leaf, DictConfig) or leaf is None:
            arm[key] = value  # a group choice (data=tiny, arm=control) or a value not in cfg
        else:
            arm[key] = str(leaf.value) if isinstance(leaf, enum.Enum) else leaf
    return arm


def run_dir(cfg: Any) -> Path:
    """``<output_root>/<sweep>/<arm_id>/seed=<seed>`` (absolute)."""
    c = cfg if isinstance(cfg, Mapping) or isinstance(cfg, DictConfig) else _container(cfg)
    root = Path(str(c["paths"]["output_root"])).expanduser()
    return (root / str(c["sweep"]) / arm_id(cfg) / f"seed={int(c['seed'])}").absolute()


def sweep_dir(cfg: Any) -> Path:
    return (Path(str(cfg["paths"]["output_root"])).expanduser() / str(cfg["sweep"])).absolute()
