"""The ``trainer`` config node as a typed, validated object.

Built with ``TrainerSettings(**cfg.trainer)``: a key the code does not know raises ``TypeError``
(so a config field can never be silently dropped on its way to the training loop), and a bad
value raises ``ValueError`` naming the field and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "plateau", "exponential")
ACCELERATORS = ("auto", "cpu", "cuda")
LOSS_KINDS = ("mae", "poisson")
PROGRESS = ("auto", "bar", "log", "none")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"trainer.{name}={value!r}; allowed: {list(allowed)}")


def _positive(name: str, value, *, strict: bool = True) -> None:
    if not (value > 0 if strict else value >= 0):
        raise ValueError(f"trainer.{name} must be {'>' if strict else '>='} 0, got {value!r}")


@dataclass(frozen=True)
class TrainerSettings:
    """See docs/contracts.md (``trainer``) for the meaning of each field."""

    max_epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "none"
    warmup_epochs: int = 0
    lr_min_ratio: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_min_lr: float = 5e-5
    exp_gamma: float = 0.95
    loss: str = "mae"
    accelerator: str = "auto"
    tf32: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    sync_every: int = 50
    eval_batch_size: int = 128
    max_data_on_device_gb: float = 8.0
    progress: str = "auto"
    log_every_n_steps: int | None = None  # None: every sync point (= sync_every); 0: off

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("accelerator", self.accelerator, ACCELERATORS)
        _choice("loss", self.loss, LOSS_KINDS)
        _choice("progress", self.progress, PROGRESS)
        if self.log_every_n_steps is None:
            object.__setattr__(self, "log_every_n_steps", self.sync_every)
        _positive("log_every_n_steps", self.log_every_n_steps, strict=False)
        if self.log_every_n_steps % self.sync_every:
            raise ValueError(
                f"trainer.log_every_n_steps={self.log_every_n_steps} must be a multiple of "
                f"trainer.sync_every={self.sync_every} (per-step values ride on the sync "
                "point's one host transfer), or 0 (no per-step logging)")
        for name in ("max_epochs", "batch_size", "lr", "sync_every", "eval_batch_size",
                     "exp_gamma", "plateau_factor"):
            _positive(name, getattr(self, name))
        for name in ("weight_decay", "momentum", "warmup_epochs", "plateau_patience",
                     "plateau_min_lr", "lr_min_ratio", "max_data_on_device_gb"):
            _positive(name, getattr(self, name), strict=False)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"trainer.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.warmup_epochs >= self.max_epochs and self.scheduler == "cosine":
            raise ValueError(f"trainer.warmup_epochs={self.warmup_epochs} must be < "
                             f"trainer.max_epochs={self.max_epochs} for the cosine schedule")

    @classmethod
    def from_config(cls, node) -> TrainerSettings:
        return cls(**dict(node))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
