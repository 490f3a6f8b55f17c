"""Generator registry: name -> builder, with one kwarg set for every architecture.

The composed config passes every knob to every architecture (``build_generator(**cfg.arch)``),
so a knob that an architecture does not use is accepted only at its default value: a
non-default value raises instead of being silently dropped (the reference lost its channel
cap exactly that way), and an unknown name raises ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import torch
from torch import nn

from .fno import CascadedFNO
from .hybrid import HybridUNO, plan_levels
from .layers import LayerScaleBlock, PtychoBlock, StablePtychoBlock

__all__ = ["KNOB_DEFAULTS", "MAX_PARAMS", "build_generator", "generator_names",
           "register_generator", "resolve_config"]

#: Knobs every builder accepts, with their defaults.
KNOB_DEFAULTS: dict[str, Any] = {
    "corners": 2,
    "max_hidden_channels": None,
    "max_levels": None,
    "levels": None,
    "gamma_init": 0.0,
    "layerscale_init": None,
    "fno_cnn_blocks": 2,
}

#: Networks above this many parameters (torch numel) are refused as absurd: 8 GB of fp32
#: weights before gradients and optimizer state.
MAX_PARAMS = 2_000_000_000

_HYBRID_KNOBS = frozenset({"corners", "max_hidden_channels", "max_levels", "levels"})


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered architecture: its builder and the knobs it consumes."""

    build: Callable[..., nn.Module]
    knobs: frozenset[str]
    summary: str
    defaults: dict[str, Any]  # per-architecture value of a knob left at None
    knob_defaults: dict[str, Any]  # per-architecture value of a knob the caller leaves out


_REGISTRY: dict[str, GeneratorSpec] = {}


def register_generator(name: str, knobs: frozenset[str] | set[str], summary: str = "",
                       defaults: dict[str, Any] | None = None,
                       knob_defaults: dict[str, Any] | None = None):
    """Decorator registering ``build(**resolved_config) -> nn.Module`` under ``name``.

    ``defaults`` gives this architecture's value for a knob whose global default is None.
    ``knob_defaults`` replaces :data:`KNOB_DEFAULTS` for knobs of this architecture that the
    caller does not pass (a variant defined by its knob values, e.g. ``stable_hybrid_ls``); the
    composed config always passes every knob, so there its arch/<name>.yaml sets them.
    """
    unknown = (set(knobs) | set(knob_defaults or {})) - KNOB_DEFAULTS.keys()
    if unknown:
        raise ValueError(f"unknown knobs {sorted(unknown)} for generator {name!r}")
    if not set(knob_defaults or {}) <= set(knobs):
        raise ValueError(f"knob_defaults of {name!r} name knobs it does not use")

    def wrap(build):
        _REGISTRY[name] = GeneratorSpec(build, frozenset(knobs), summary, dict(defaults or {}),
                                        dict(knob_defaults or {}))
        return build

    return wrap


def generator_names() -> tuple[str, ...]:
    """Registered architecture names, sorted."""
    return tuple(sorted(_REGISTRY))


def _spec(name: str) -> GeneratorSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown generator {name!r}; registered: {', '.join(generator_names())}")
    return _REGISTRY[name]


def _check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


def resolve_config(name: str, *, in_channels: int = 1, hidden_channels: int = 32,
                   n_modes: int = 12, fno_blocks: int = 4, N: int = 64,
                   **knobs: Any) -> dict[str, Any]:
    """Validate and complete a generator config: ``name`` plus every kwarg, defaults filled.

    Raises
    ------
    TypeError
        An unknown keyword.
    ValueError
        An unknown name, a bad value, or a knob set to a non-default value for an
        architecture that does not use it (all naming the field).
    """
    name = name.value if isinstance(name, Enum) else name  # config enums: plain str from here
    spec = _spec(name)
    unknown = knobs.keys() - KNOB_DEFAULTS.keys()
    if unknown:
        raise TypeError(f"build_generator() got unexpected keyword argument(s) "
                        f"{sorted(unknown)}; knobs are {sorted(KNOB_DEFAULTS)}")
    cfg = {"name": name, "in_channels": in_channels, "hidden_channels": hidden_channels,
           "n_modes": n_modes, "fno_blocks": fno_blocks, "N": N, **KNOB_DEFAULTS,
           **spec.knob_defaults, **knobs}
    for field in ("in_channels", "hidden_channels", "n_modes", "fno_blocks", "N"):
        _check_int(field, cfg[field], 1)
    for field in sorted(KNOB_DEFAULTS.keys() - spec.knobs):
        if cfg[field] != KNOB_DEFAULTS[field]:
            raise ValueError(f"{field}={cfg[field]!r} does not apply to generator {name!r} "
                             f"(it uses {sorted(spec.knobs)}); leave it at "
                             f"{KNOB_DEFAULTS[field]!r}")
    if cfg["corners"] not in (1, 2) or isinstance(cfg["corners"], bool):
        raise ValueError(f"corners must be 1 or 2, got {cfg['corners']!r}")
    for field in ("max_hidden_channels", "max_levels", "levels"):
        if cfg[field] is not None:
            _check_int(field, cfg[field], 1)
    _check_int("fno_cnn_blocks", cfg["fno_cnn_blocks"], 0)
    for field, value in spec.defaults.items():
        if cfg[field] is None:
            cfg[field] = value
    return cfg


def _build(cfg: dict[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    model = _spec(cfg["name"]).build(**kwargs)
    model.config = dict(cfg)  # effective settings, for logs and the manifest
    return model


def build_generator(name: str, *, in_channels: int = 1, hidden_channels: int = 32,
                    n_modes: int = 12, fno_blocks: int = 4, N: int = 64,
                    **knobs: Any) -> nn.Module:
    """Build a registered generator: real ``(B, C, N, N)`` -> complex ``(B, C, N, N)``.

    Parameters
    ----------
    name : str
        One of :func:`generator_names` (``fno``, ``hybrid``, ``layerscale_hybrid``,
        ``stable_hybrid``, ``stable_hybrid_ls``).
    in_channels : int, default 1
        ``C = gridsize**2``.
    hidden_channels : int, default 32
        Width of the finest level (hybrid family) or of every block (``fno``).
    n_modes : int, default 12
        Fourier modes per corner and axis.
    fno_blocks : int, default 4
        Depth: residual spectral blocks (hybrid: in the encoder, plus one bottleneck block).
    N : int, default 64
        Input side.
    **knobs
        ``corners`` (2; 1 = reference one-corner fallback), ``max_hidden_channels`` (None),
        ``max_levels`` (None -> coarsest map >= 8 x 8), ``levels`` (None; reference
        depth-as-levels), ``gamma_init`` (0.0, stable_hybrid; 1.0 stable_hybrid_ls),
        ``layerscale_init`` (None: stable_hybrid none, stable_hybrid_ls 1e-3,
        layerscale_hybrid 1e-2), ``fno_cnn_blocks`` (2, fno).

    Returns
    -------
    nn.Module
        With attributes ``config`` (the effective settings), ``channels``,
        ``blocks_per_level``, ``N``, ``in_channels``; the output projection is ``head``.

    Raises
    ------
    TypeError, ValueError
        See :func:`resolve_config`; also ``ValueError`` for geometrically impossible networks
        and for more than :data:`MAX_PARAMS` parameters.
    """
    cfg = resolve_config(name, in_channels=in_channels, hidden_channels=hidden_channels,
                         n_modes=n_modes, fno_blocks=fno_blocks, N=N, **knobs)
    # Size check on the meta device first: refusing a 4.4B-parameter network must not
    # allocate it.
    check_size(build_on_meta(cfg))
    return _build(cfg)


def build_on_meta(cfg: dict[str, Any]) -> nn.Module:
    """Build a :func:`resolve_config` result on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return _build(cfg)


def check_size(model: nn.Module) -> None:
    """Refuse networks above :data:`MAX_PARAMS`, naming the fields that set the size."""
    numel = sum(p.numel() for p in model.parameters())
    if numel > MAX_PARAMS:
        cfg = model.config
        raise ValueError(
            f"generator {cfg['name']!r} with fno_blocks={cfg['fno_blocks']}, "
            f"levels={cfg['levels']}, "
            f"hidden_channels={cfg['hidden_channels']}, "
            f"max_hidden_channels={cfg['max_hidden_channels']} has {numel:,} parameters "
            f"(limit {MAX_PARAMS:,}); cap the width with max_hidden_channels or use fewer levels"
        )


## Registered architectures


def _hybrid(block, *, in_channels, hidden_channels, n_modes, fno_blocks, N, corners,
            max_hidden_channels, max_levels, levels, **_unused):
    # `_unused`: knobs of the other families, already checked to be at their defaults.
    if n_modes < 2:
        raise ValueError(f"n_modes must be >= 2 for the hybrid family (the bottleneck uses "
                         f"n_modes // 2), got {n_modes}")
    return HybridUNO(in_channels, hidden_channels, n_modes,
                     plan_levels(N, fno_blocks, max_levels=max_levels, levels=levels),
                     partial(block, corners=corners), N=N, corners=corners,
                     max_hidden_channels=max_hidden_channels)


@register_generator("hybrid", _HYBRID_KNOBS, "Hybrid U-NO with PtychoBlocks (reference)")
def _build_hybrid(**cfg):
    return _hybrid(PtychoBlock, **cfg)


@register_generator("stable_hybrid", _HYBRID_KNOBS | {"gamma_init", "layerscale_init"},
                    "Hybrid U-NO with InstanceNorm-last blocks (identity at init)")
def _build_stable_hybrid(*, gamma_init, layerscale_init, **cfg):
    block = partial(StablePtychoBlock, gamma_init=gamma_init, layerscale_init=layerscale_init)
    return _hybrid(block, **cfg)


@register_generator("stable_hybrid_ls", _HYBRID_KNOBS | {"gamma_init", "layerscale_init"},
                    "Hybrid U-NO with the reference HEAD's stable block: InstanceNorm (weight 1) "
                    "+ LayerScale 1e-3 (StablePtychoBlock v2)",
                    knob_defaults={"gamma_init": 1.0, "layerscale_init": 1e-3})
def _build_stable_hybrid_ls(*, gamma_init, layerscale_init, **cfg):
    # The same block as stable_hybrid; a separate name so that the arm label, the manifest and
    # the decision's roles (arch_fix = stable_hybrid, the zero-gamma v1) tell the variants apart.
    return _build_stable_hybrid(gamma_init=gamma_init, layerscale_init=layerscale_init, **cfg)


@register_generator("layerscale_hybrid", _HYBRID_KNOBS | {"layerscale_init"},
                    "Hybrid U-NO with LayerScale blocks, no norm (the pivot)",
                    defaults={"layerscale_init": 1e-2})
def _build_layerscale_hybrid(*, layerscale_init, **cfg):
    return _hybrid(partial(LayerScaleBlock, layerscale_init=layerscale_init), **cfg)


@register_generator("fno", frozenset({"corners", "fno_cnn_blocks"}),
                    "Cascaded FNO: PtychoBlocks at constant resolution, conv refiner")
def _build_fno(*, in_channels, hidden_channels, n_modes, fno_blocks, N, corners, fno_cnn_blocks,
               **_unused):
    return CascadedFNO(in_channels, hidden_channels, n_modes, fno_blocks, N, corners=corners,
                       fno_cnn_blocks=fno_cnn_blocks)
