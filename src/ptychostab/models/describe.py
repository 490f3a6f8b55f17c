"""``describe``: size, schedule and a training-memory estimate of a generator, without allocating.

The dry run calls this for every arm of a sweep, before anything is launched, so it must be fast
and must never materialise a network: configs are built on the meta device (shapes only) and the
activation estimate runs a meta-device forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .layers import SpectralResidualBlock
from .registry import build_on_meta, check_size, resolve_config

__all__ = ["describe", "saved_activation_bytes"]

#: Copies of the weights kept during training with Adam: weights, gradients, two moments.
ADAM_COPIES = 4


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"describe() takes an nn.Module or a generator config mapping, got "
                        f"{type(config).__name__}")
    config = dict(config)
    if "name" not in config:
        raise ValueError("a generator config needs 'name' (one of the registered generators)")
    return config


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage()._cdata  # views of one tensor share it: count them once
    except (RuntimeError, AttributeError):
        return id(t)


def saved_activation_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bytes autograd keeps for backward in one forward pass, measured on the meta device.

    Counts every distinct storage that the generator's forward saves for backward (inputs of
    convs and FFTs, GELU inputs, norm statistics, weight copies made for the spectral
    contraction) plus the output. Parameters are excluded (counted separately). Not counted:
    the loss/physics graph after the generator, transient buffers freed within an op, FFT and
    cuDNN workspaces, allocator fragmentation and the CUDA context.
    """
    def meta(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=t.dtype, device="meta").requires_grad_(t.requires_grad)

    params = {n: meta(p) for n, p in model.named_parameters()}
    buffers = {n: meta(b) for n, b in model.named_buffers()}
    seen = {_storage_key(t) for t in params.values()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    x = torch.empty(input_shape, device="meta")
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = functional_call(model, {**params, **buffers}, (x,))
    return total + out.numel() * out.element_size()


def describe(model_or_config: nn.Module | Mapping[str, Any], batch_size: int = 16) -> dict:
    """Parameter counts, channel schedule and training-memory estimate of a generator.

    Parameters
    ----------
    model_or_config : nn.Module or mapping
        A built generator, or ``build_generator`` kwargs with ``name`` (a dict, an OmegaConf
        node or a dataclass). A config is built on the meta device only, so even a refused
        4.4B-parameter arm costs milliseconds.
    batch_size : int, default 16
        Batch size of the memory estimate.

    Returns
    -------
    dict
        ``name``, ``config`` (effective settings), ``params_real`` (complex weights count as
        2), ``params_numel`` (torch ``numel``, complex as 1), ``param_bytes``,
        ``largest_param`` (name, bytes), ``channels`` (encoder width per level),
        ``blocks_per_level``, ``levels``, ``spectral_blocks`` (residual blocks, bottleneck
        included), ``batch_size``, ``activation_bytes`` (see :func:`saved_activation_bytes`)
        and ``memory_bytes_estimate`` = 4 x ``param_bytes`` (weights, grads, Adam moments) +
        ``activation_bytes``. Schedule and memory entries are None for a module that lacks
        the generator attributes (``channels``, ``N``, ``in_channels``).

    Raises
    ------
    ValueError, TypeError
        For a config, whatever :func:`~ptychostab.models.build_generator` would raise
        (impossible geometry, absurd size, bad knob); the message carries the numbers.
    """
    if isinstance(model_or_config, nn.Module):
        model = model_or_config
    else:
        model = build_on_meta(resolve_config(**_config_dict(model_or_config)))
        check_size(model)

    sizes = {name: p.numel() * p.element_size() for name, p in model.named_parameters()}
    params_numel = sum(p.numel() for p in model.parameters())
    params_real = sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    param_bytes = sum(sizes.values())
    largest = max(sizes, key=sizes.get, default=None)  # the tensor an OOM report names
    channels = getattr(model, "channels", None)
    N, in_channels = getattr(model, "N", None), getattr(model, "in_channels", None)
    activation = None
    if N is not None and in_channels is not None:
        activation = saved_activation_bytes(model, (batch_size, in_channels, N, N))
    config = getattr(model, "config", None)
    return {
        "name": None if config is None else config["name"],
        "config": None if config is None else dict(config),
        "params_real": params_real,
        "params_numel": params_numel,
        "param_bytes": param_bytes,
        "largest_param": None if largest is None else {"name": largest, "bytes": sizes[largest]},
        "channels": None if channels is None else list(channels),
        "blocks_per_level": getattr(model, "blocks_per_level", None),
        "levels": None if channels is None else len(channels),
        "spectral_blocks": sum(isinstance(m, SpectralResidualBlock) for m in model.modules()),
        "batch_size": batch_size,
        "activation_bytes": activation,
        "memory_bytes_estimate": None if activation is None
        else ADAM_COPIES * param_bytes + activation,
    }
