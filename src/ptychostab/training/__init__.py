"""Training core: the LightningModule, clipping (norm, value, unit-wise AGC), optimizers and
schedules, device-resident seeded batches, grad-norm statistics and failure detection."""

from .batches import SeededBatches, epoch_permutation
from .clipping import GradientClipper, adaptive_gradient_clip_, global_grad_norm
from .module import Preempted, PtychoModule
from .monitors import CollapseMeter, FailureSettings, StepMonitor, TrainingFailure
from .optim import build_optimizer, build_scheduler
from .settings import TrainerSettings

__all__ = [
    "CollapseMeter",
    "FailureSettings",
    "GradientClipper",
    "Preempted",
    "PtychoModule",
    "SeededBatches",
    "StepMonitor",
    "TrainerSettings",
    "TrainingFailure",
    "adaptive_gradient_clip_",
    "build_optimizer",
    "build_scheduler",
    "epoch_permutation",
    "global_grad_norm",
]
