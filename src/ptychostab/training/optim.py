"""Optimizers and learning-rate schedules, built from :class:`TrainerSettings`.

Schedulers here are *epoch* schedulers and the training module steps them explicitly at every
epoch end (``plateau`` with the validation loss). Lightning does not step schedulers under
manual optimisation, which is how the reference's warmup/cosine schedules never ran.

Schedules (``e`` = completed epochs, ``E`` = max_epochs, ``w`` = warmup_epochs,
``r`` = lr_min_ratio):

- ``cosine``: ``lr(e) = base * f(e)``, ``f = 0.1 + 0.9 e / w`` while ``e < w`` (linear warmup
  from 0.1 x base, as the reference's LinearLR), then
  ``f = r + (1 - r) (1 + cos(pi (e - w) / max(1, E - w))) / 2`` (CosineAnnealingLR's closed form
  with ``eta_min = r * base``).
- ``plateau``: ``ReduceLROnPlateau(mode=min, factor, patience, min_lr, threshold=0)``.
- ``exponential``: ``lr(e) = base * gamma^e``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .settings import TrainerSettings

__all__ = ["WARMUP_START_FACTOR", "WarmupCosine", "EpochScheduler", "build_optimizer",
           "build_scheduler", "describe_optimizer", "implementation_flags",
           "restore_step_flags"]

WARMUP_START_FACTOR = 0.1  # reference: LinearLR(start_factor=0.1) over the warmup epochs


def _fast_kwargs(params: list[nn.Parameter], capturable: bool = False) -> dict:
    """``fused`` where every parameter allows it (real floating point on CUDA), else
    ``foreach``. Complex (spectral) weights rule out ``fused`` in torch today.

    ``capturable`` (Adam/AdamW, for a CUDA-graph captured step): the step counter and the bias
    corrections live on the device, so a replayed graph advances them."""
    if params and all(p.is_cuda and p.is_floating_point() for p in params):
        fast = {"fused": True}
    else:
        fast = {"foreach": True}
    if capturable:
        fast["capturable"] = True
    return fast


def build_optimizer(params, settings: TrainerSettings, *, capturable: bool = False
                    ) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD(momentum, Nesterov when momentum > 0) with the configured knobs.

    ``capturable=True`` builds an optimizer whose ``step()`` may be captured in a CUDA graph
    (parameters on CUDA). SGD needs no such flag (it keeps no step counter); its learning rate
    is a Python float, as Adam's, so a captured step bakes the current learning rate in and
    the capturer re-captures when a scheduler changes it (``training.graphs``).
    """
    params = [p for p in params if p.requires_grad]
    fast = _fast_kwargs(params, capturable=capturable and settings.optimizer != "sgd")
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, betas=settings.betas,
                                weight_decay=settings.weight_decay, **fast)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas,
                                 weight_decay=settings.weight_decay, **fast)
    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                           nesterov=settings.momentum > 0, weight_decay=settings.weight_decay,
                           **fast)


class WarmupCosine:
    """Multiplicative factor ``f(epoch)`` of the warmup + cosine schedule (picklable)."""

    def __init__(self, max_epochs: int, warmup_epochs: int, lr_min_ratio: float):
        self.max_epochs, self.warmup_epochs, self.lr_min_ratio = (
            int(max_epochs), int(warmup_epochs), float(lr_min_ratio))

    def __call__(self, epoch: int) -> float:
        w, r = self.warmup_epochs, self.lr_min_ratio
        if epoch < w:
            return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * epoch / w
        t = min(epoch - w, max(1, self.max_epochs - w))
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * t / max(1, self.max_epochs - w)))


class EpochScheduler:
    """One ``step(val_loss)`` per epoch whatever the scheduler kind; ``none`` does nothing."""

    def __init__(self, kind: str, scheduler=None, params: dict | None = None):
        self.kind, self.scheduler, self.params = kind, scheduler, params or {}

    def step(self, val_loss: float) -> None:
        if self.scheduler is None:
            return
        if self.kind == "plateau":
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)

    def describe(self) -> dict:
        cls = None if self.scheduler is None else type(self.scheduler).__name__
        return {"kind": self.kind, "class": cls, **self.params}


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainerSettings
                    ) -> EpochScheduler:
    s = settings
    if s.scheduler == "none":
        return EpochScheduler("none")
    if s.scheduler == "cosine":
        factor = WarmupCosine(s.max_epochs, s.warmup_epochs, s.lr_min_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return EpochScheduler("cosine", sched, {
            "max_epochs": factor.max_epochs, "warmup_epochs": factor.warmup_epochs,
            "warmup_start_factor": WARMUP_START_FACTOR, "lr_min_ratio": factor.lr_min_ratio,
            "eta_min": factor.lr_min_ratio * s.lr})
    if s.scheduler == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=s.plateau_factor, patience=s.plateau_patience,
            min_lr=s.plateau_min_lr, threshold=0.0)
        return EpochScheduler("plateau", sched, {
            "factor": sched.factor, "patience": sched.patience, "min_lr": sched.min_lrs[0],
            "threshold": sched.threshold, "monitor": "val_loss"})
    sched = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=s.exp_gamma)
    return EpochScheduler("exponential", sched, {"gamma": sched.gamma})


def restore_step_flags(optimizer: torch.optim.Optimizer, flags: dict) -> None:
    """Put back the implementation flags (``foreach``, ``fused``, ``capturable``) that
    ``optimizer.load_state_dict`` copied from the saved param groups, and move capturable
    step counters onto the parameters' device (a checkpoint written by a run with other
    fast-path settings then resumes with this run's)."""
    for group in optimizer.param_groups:
        for key, value in flags.items():
            if key in group:
                group[key] = value
        on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                where = p.device if on_device else torch.device("cpu")
                if step.device != where:  # eager Adam reads a CPU counter without a sync
                    optimizer.state[p]["step"] = step.to(device=where, dtype=torch.float32)


def implementation_flags(optimizer: torch.optim.Optimizer) -> dict:
    """The first param group's ``foreach`` / ``fused`` / ``capturable`` flags."""
    g = optimizer.param_groups[0]
    return {k: g[k] for k in ("foreach", "fused", "capturable") if k in g}


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict:
    """Settings read back from the optimizer's first param group."""
    g = optimizer.param_groups[0]
    keys = ("lr", "initial_lr", "betas", "weight_decay", "momentum", "nesterov", "eps",
            "foreach", "fused", "capturable")
    out = {"class": type(optimizer).__name__}
    out.update({k: (list(g[k]) if isinstance(g[k], tuple) else g[k]) for k in keys if k in g})
    out["n_params"] = sum(len(g["params"]) for g in optimizer.param_groups)
    return out
