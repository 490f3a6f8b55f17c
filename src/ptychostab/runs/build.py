"""What a job builds before training: the device, the model, the data, the process flags.

Module-level functions so tests and benchmarks substitute doubles; :mod:`.job` imports them
by name and calls them through its own namespace (``monkeypatch.setattr(job, "load_data", ...)``
works).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from ptychostab.runs.faults import InfraFault
from ptychostab.runs.signals import PreemptionGuard

__all__ = ["ReinstallSignals", "TorchGlobals", "build_model", "configure_device",
           "describe_model", "load_data", "resolve_device"]


def resolve_device(accelerator: str) -> torch.device:
    """The training device; ``InfraFault("device")`` when CUDA is asked for and absent."""
    if accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InfraFault("device", "no CUDA device: trainer.accelerator=cuda but torch sees "
                                       "none on this machine")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def configure_device(device: torch.device, tf32: bool) -> dict:
    """Set the process-wide TF32 flags on CUDA (restored by :class:`TorchGlobals`) and reset
    the peak-memory counter; returns the ``tf32`` block of the manifest's ``effective``."""
    out = {"requested": tf32, "applies": device.type == "cuda"}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        out.update(matmul=torch.backends.cuda.matmul.allow_tf32,
                   cudnn=torch.backends.cudnn.allow_tf32,
                   float32_matmul_precision=torch.get_float32_matmul_precision())
        torch.cuda.reset_peak_memory_stats(device)
    return out


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """``build_generator(arch.name, in_channels=gridsize**2, N=data.N, **rest of arch)``."""
    from ptychostab.models import build_generator

    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    name = arch.pop("name")
    return build_generator(name, in_channels=int(cfg.data.gridsize) ** 2, N=int(cfg.data.N),
                           **arch)


def describe_model(model: torch.nn.Module, batch_size: int) -> dict:
    from ptychostab.models import describe

    info = dict(describe(model, batch_size=batch_size))
    info["config"] = dict(getattr(model, "config", {}) or {})
    return info


def load_data(cfg: DictConfig):
    from ptychostab.data.simulate import load_or_build

    return load_or_build(OmegaConf.to_container(cfg.data, resolve=True),
                         cache_dir=cfg.paths.cache_dir)


class ReinstallSignals(Callback):
    """Lightning replaces SIGTERM's handler at fit start; put the job's back."""

    def __init__(self, guard: PreemptionGuard):
        self.guard = guard

    def on_train_start(self, trainer, pl_module) -> None:
        self.guard.reinstall()


class TorchGlobals:
    """Save and restore the process-wide flags a job changes (an in-process sweep runs many)."""

    def __enter__(self):
        self.saved = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled(),
                      torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                      torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        return self

    def __exit__(self, *exc):
        det, warn, cdet, bench, tf_mm, tf_cudnn = self.saved
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cdet, bench
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf_mm, tf_cudnn


#: Lightning's messages that do not apply to this driver: the device banner and the litlogger
#: tip (the manifest records the device; trackers are our sinks), and the end-of-fit notice
#: (the recorder logs how the run ended).
LIGHTNING_NOISE = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:",
                   "`Trainer.fit` stopped:")
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero",
                      "lightning.fabric.utilities.rank_zero")


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(LIGHTNING_NOISE)


@contextlib.contextmanager
def quiet_lightning():
    """Silence, inside this block only, what Lightning says that does not apply here:
    :data:`LIGHTNING_NOISE`, the "srun is available but not used" warning (submitit starts
    the job; srun would start a second one) and the ``LeafSpec`` deprecation of its pytree
    helper. Everything else Lightning says still shows."""
    drop = _DropLightningNoise()
    loggers = [logging.getLogger(name) for name in _RANK_ZERO_LOGGERS]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"The `srun` command is available")
            warnings.filterwarnings("ignore", message=r".*LeafSpec")
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)
