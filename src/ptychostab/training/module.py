"""The LightningModule: physics-informed unsupervised training of one generator.

One optimisation step (manual optimisation)::

    loss = LOSS(predict_amplitude(G(x), probe), x)        one physics implementation
    loss.backward()
    pre = ||grad||  ->  clip (none | norm | value | agc)  ->  post = ||grad||
    optimizer.step(); optimizer.zero_grad(set_to_none=True)
    monitor.record(loss, pre, post)                       device ops only, no host sync

Every ``sync_every`` steps and at the last step of an epoch the failure monitor is read once;
at the end of an epoch: validation, one read of the epoch's statistics, a history row, the
scheduler step, the epoch-end callback (the job writes checkpoints and records there).

Lightning drives epochs, not steps: the train loader (:class:`~.batches.EpochLoader`) yields
one :data:`~.batches.EPOCH_RUN` per epoch and ``training_step(EPOCH_RUN)`` runs the epoch's
remaining steps (:meth:`~PtychoModule.epoch_steps`, one ``training_step(index_batch, i)``
call per ``next()``: a pack of seeds, :mod:`ptychostab.runs.pack`, interleaves several
modules' steps without a Trainer). Lightning's per-batch
machinery (fetcher, hooks, progress tracking, ``manual_backward`` and ``LightningOptimizer``
wrappers) cost about 1 ms a step on the project's CPU machine (ours/bare 0.73-0.87 at a 5.5 ms
step, against 0.99-1.10 with this driver; benchmarks/train_step.py), and on a GPU that host
time is what an eager step waits for. The step calls ``loss.backward()`` and
``optimizer.step()`` directly (single device, 32-bit: that is all Lightning would do besides
hooks nobody here uses). Lightning's own ``trainer.global_step`` therefore stays 0; the module
owns its position.

Fast-path flags (``trainer``): ``compile`` wraps the generator in ``torch.compile``;
``cuda_graphs`` replays the whole step from a captured CUDA graph (:mod:`.graphs`); ``tf32``
is set by the job (process-wide).

The module owns its position: ``epoch`` (the epoch in progress), ``step_in_epoch`` (batches
done in it) and ``global_step_count`` (optimizer steps done). A resumed job restores them with
:meth:`load_training_state` and Lightning only drives the remaining epochs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor, nn

from ptychostab.physics.forward import predict_amplitude
from ptychostab.physics.losses import get_loss, loss_names

from .batches import EpochLoader, EpochRun, SeededBatches
from .clipping import GradientClipper
from .graphs import GraphedStep
from .monitors import CollapseMeter, FailureSettings, StepMonitor, TrainingFailure
from .optim import (
    build_optimizer,
    build_scheduler,
    describe_optimizer,
    implementation_flags,
    restore_step_flags,
)
from .settings import TrainerSettings

__all__ = ["Preempted", "PtychoModule"]

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised at a step boundary after a stop signal (SIGTERM/SIGUSR2: preemption, SIGINT:
    Ctrl-C); the job saves ``last.ckpt`` and records ``preempted`` or ``interrupted``."""

    def __init__(self, signum: int | None = None):
        super().__init__(f"preemption signal {signum}")
        self.signum = signum


class PtychoModule(L.LightningModule):
    """Train ``generator`` on diffraction amplitudes with the far-field physics loss.

    Parameters
    ----------
    generator : nn.Module
        Real ``(B, C, N, N)`` -> complex ``(B, C, N, N)``; its output projection is ``head``.
    probe : Tensor, complex (N, N)
        The probe the data were simulated with (also used in the loss).
    train_data, val_data : Tensor, float (n, C, N, N)
        Observed amplitudes, ideally already on ``device`` (see :func:`batches.place`).
    settings : TrainerSettings
    clipper : GradientClipper
    failure : FailureSettings
    seed : int
        Training seed (batch order).
    device : torch.device
    clock : callable () -> float, optional
        Wall seconds since the job started (cumulative over resumed segments).
    on_epoch_end : callable (module, row, is_best) -> None, optional
        Called after each completed epoch, position already advanced (the job checkpoints).
    stop_requested : callable () -> int | None, optional
        A pending stop signal number (preemption or SIGINT), checked at every step boundary
        and after every epoch end.
    generator_info : dict, optional
        Static description of the generator (``ptychostab.models.describe``) for the
        effective settings.
    on_sync : callable (module, global_step, last) -> None, optional
        Called at every sync point (every ``sync_every`` steps and at the epoch's last step)
        with the last step's ``train_loss``, ``grad_norm_pre``, ``grad_norm_post``, read in
        the sync point's one host transfer (trackers' per-step values, the progress display).
    """

    def __init__(self, generator: nn.Module, probe: Tensor, train_data: Tensor,
                 val_data: Tensor, *, settings: TrainerSettings, clipper: GradientClipper,
                 failure: FailureSettings, seed: int, device: torch.device | str = "cpu",
                 clock: Callable[[], float] | None = None,
                 on_epoch_end: Callable | None = None,
                 stop_requested: Callable[[], int | None] | None = None,
                 generator_info: dict | None = None,
                 on_sync: Callable | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.device_ = torch.device(device)
        self.settings, self.clipper, self.failure = settings, clipper, failure
        self.generator = generator
        self.register_buffer("probe", torch.as_tensor(probe), persistent=False)
        self.train_data, self.val_data = train_data, val_data
        self.loss_fn = get_loss(settings.loss)
        self.loss_names = loss_names(settings.loss)
        self.generator_info = dict(generator_info or {})

        if settings.cuda_graphs and self.device_.type != "cuda":
            raise ValueError("trainer.cuda_graphs=true needs a CUDA device; this job runs on "
                             f"{self.device_} (set trainer.cuda_graphs=false)")
        # Kept out of the module tree: the compiled wrapper shares the generator's parameters
        # and must not duplicate them in state_dict().
        self.__dict__["forward_fn"] = torch.compile(generator) if settings.compile else generator

        self.optimizer = build_optimizer(generator.parameters(), settings,
                                         capturable=settings.cuda_graphs)
        self._optimizer_flags = implementation_flags(self.optimizer)
        self.scheduler = build_scheduler(self.optimizer, settings)
        self.batches = SeededBatches(train_data, settings.batch_size, seed,
                                     cursor=lambda: (self.epoch, self.step_in_epoch),
                                     device=self.device_)
        self.monitor = StepMonitor(self.batches.batches_per_epoch, failure, self.device_)
        self.graphed = GraphedStep(self) if settings.cuda_graphs else None

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step_count = 0
        self.history: list[dict] = []
        self.best = {"val_loss": math.inf, "epoch": None}
        self.epoch_lr = settings.lr
        t0 = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - t0)
        self.on_epoch_end = on_epoch_end
        self.on_sync = on_sync
        self.log_epoch_line = True  # a progress display that writes its own line turns it off
        self.step_driver = "one Lightning training_step per epoch"  # a pack says its own
        self.stop_requested = stop_requested or (lambda: None)

    # --- the physics ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fn(x)

    def compute_loss(self, amplitude: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, object)`` for a batch of observed amplitudes (the loss's own input too)."""
        obj = self.forward_fn(amplitude)
        return self.loss_fn(predict_amplitude(obj, self.probe), amplitude), obj

    # --- Lightning plumbing --------------------------------------------------------------------
    def configure_optimizers(self):
        # Schedulers are stepped by on_train_epoch_end, not by Lightning.
        return self.optimizer

    def train_dataloader(self):
        return EpochLoader()  # one item per epoch: see the module docstring

    def on_fit_start(self) -> None:
        log.info("effective settings: %s", self.effective_settings())

    def on_train_epoch_start(self) -> None:
        self.epoch_lr = float(self.optimizer.param_groups[0]["lr"])

    # --- one epoch, one step -------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int = 0) -> None:
        """One optimizer step on ``batch`` (an int64 index batch into ``train_data``, as the
        epoch loop passes, or a batch of inputs); or, for :data:`EPOCH_RUN` (what Lightning
        passes), the remaining steps of the current epoch."""
        if isinstance(batch, EpochRun):
            self._train_epoch()
            return None
        signum = self.stop_requested()
        if signum is not None:
            raise Preempted(signum)
        step = self.global_step_count
        if self.failure.test_inject_exception_step == step:
            raise RuntimeError(f"injected test exception at global step {step}")

        if self.graphed is not None:
            self.graphed(batch)
        else:
            x = batch if batch.is_floating_point() else self.batches.gather(batch)
            loss, _ = self.compute_loss(x)
            if self.failure.test_inject_nan_step == step:
                loss = loss * math.nan
            loss.backward()
            pre, post = self.clipper(self.generator)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.monitor.record(loss, pre, post)

        self.global_step_count += 1
        self.step_in_epoch += 1
        last = self.step_in_epoch == self.batches.batches_per_epoch
        if last or self.global_step_count % self.settings.sync_every == 0:
            seen = self.monitor.poll(with_last=self.on_sync is not None)
            self._raise_on_step_failure(seen)
            if self.on_sync is not None:
                self.on_sync(self, self.global_step_count, seen.get("last", {}))
        return None

    def epoch_steps(self) -> Iterator[int]:
        """The current epoch's steps from ``step_in_epoch`` on (a resumed epoch continues),
        one ``training_step`` per ``next()``; yields the batch index just done. Nothing runs
        before the first ``next()``. :meth:`_train_epoch` consumes it whole (Lightning's
        path); a pack (:mod:`ptychostab.runs.pack`) interleaves several modules' steps."""
        first = self.step_in_epoch
        for i, index in enumerate(self.batches.index_batches(self.epoch, first), start=first):
            self.training_step(index, i)
            yield i

    def _train_epoch(self) -> None:
        for _ in self.epoch_steps():
            pass

    def _raise_on_step_failure(self, seen: dict) -> None:
        for kind in ("nonfinite", "diverged"):
            step = seen[kind]
            if step is None:
                continue
            if kind == "nonfinite":
                msg = f"NaN/Inf loss or gradient norm first at global step {step}"
            else:
                s = self.failure
                msg = (f"loss > {s.loss_factor} x running min or grad norm > "
                       f"{s.grad_norm_bound:g} for {s.patience_steps} consecutive steps "
                       f"(steps {step - s.patience_steps + 1}..{step})")
            self.history.append(self._row(self.monitor.epoch_summary(), val_loss=None))
            raise TrainingFailure(kind, epoch=self.epoch, step=step, message=msg,
                                  wall_s=self.clock())

    # --- epoch end -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> tuple[Tensor, Tensor]:
        """``(val_loss, amp_rel_std)`` over the validation set, as device scalars.

        The loss is the batch-size-weighted mean of per-batch losses (batches of
        ``eval_batch_size``); the spread is :class:`CollapseMeter`'s.
        """
        was_training = self.generator.training
        self.generator.eval()
        meter = CollapseMeter(self.device_)
        total = torch.zeros((), dtype=torch.float64, device=self.device_)
        for chunk in self.val_data.split(self.settings.eval_batch_size):
            x = chunk.to(self.device_, non_blocking=True)
            loss, obj = self.compute_loss(x)
            total += loss.double() * x.shape[0]
            meter.update(obj.abs())
        self.generator.train(was_training)
        return total / max(1, self.val_data.shape[0]), meter.value()

    def on_train_epoch_end(self) -> None:
        val_loss, rel_std = self.validate()
        summary = self.monitor.epoch_summary({"val_loss": val_loss, "amp_rel_std": rel_std})
        row = self._row(summary, val_loss=summary["val_loss"])
        self.history.append(row)
        vl = summary["val_loss"]
        is_best = math.isfinite(vl) and vl < self.best["val_loss"]
        if is_best:
            self.best = {"val_loss": vl, "epoch": self.epoch}
        failure = self._epoch_failure(summary)
        self.scheduler.step(vl)

        done_epoch = self.epoch
        self.epoch += 1
        self.step_in_epoch = 0
        self.monitor.start_epoch()
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, row, is_best)
        log.log(logging.INFO if self.log_epoch_line else logging.DEBUG,
                "epoch %d: train %.5g val %.5g grad pre med %.3g max %.3g lr %.3g",
                done_epoch, row["train_loss"], vl, row["grad_norm_pre_median"],
                row["grad_norm_pre_max"], row["lr"])
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in row.items() if v is not None},
                                    step=done_epoch)
        if failure is not None:
            raise failure
        signum = self.stop_requested()
        if signum is not None:
            raise Preempted(signum)

    def _epoch_failure(self, summary: dict) -> TrainingFailure | None:
        f, wall = self.failure, self.clock()
        for kind in ("nonfinite", "diverged"):
            if summary[kind] is not None:
                return TrainingFailure(kind, epoch=self.epoch, step=summary[kind], wall_s=wall,
                                       message=f"{kind} detected at epoch end")
        if not math.isfinite(summary["val_loss"]):
            return TrainingFailure("nonfinite", epoch=self.epoch, step=self.global_step_count,
                                   wall_s=wall, message="NaN/Inf validation loss")
        rel = summary["amp_rel_std"]
        if f.collapse_rel_std is not None and rel < f.collapse_rel_std:
            return TrainingFailure(
                "collapsed", epoch=self.epoch, step=self.global_step_count, wall_s=wall,
                message=f"predicted amplitude spatially constant on validation: "
                        f"std/mean = {rel:.3g} < {f.collapse_rel_std:g}")
        return None

    def _row(self, summary: dict, *, val_loss: float | None) -> dict:
        keys = ("train_loss", "grad_norm_pre_mean", "grad_norm_pre_median", "grad_norm_pre_max",
                "grad_norm_post_mean", "grad_norm_post_median", "grad_norm_post_max",
                "clip_fraction", "steps")
        row = {"epoch": self.epoch, "global_step": self.global_step_count,
               "val_loss": val_loss, "lr": self.epoch_lr, "wall_s": round(self.clock(), 3)}
        row.update({k: summary[k] for k in keys})
        row["amp_rel_std"] = summary.get("amp_rel_std")
        return row

    # --- state for checkpoints -----------------------------------------------------------------
    def training_state(self) -> dict:
        """Everything a resumed run needs besides the RNG (the job adds that)."""
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "monitor": self.monitor.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step_count,
            "history": list(self.history),
            "best": dict(self.best),
            "epoch_lr": self.epoch_lr,
        }

    def load_training_state(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_step_flags(self.optimizer, self._optimizer_flags)  # this run's fast path
        if self.graphed is not None:
            self.graphed.reset()  # the optimizer state tensors were replaced
        self.scheduler.load_state_dict(state["scheduler"])
        self.monitor.load_state_dict(state["monitor"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step_count = int(state["global_step"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.epoch_lr = float(state["epoch_lr"])

    # --- what actually runs --------------------------------------------------------------------
    def effective_settings(self) -> dict:
        """Settings read back from the built objects (not from the config)."""
        gen = self.generator
        n_real = sum(p.numel() * (2 if p.is_complex() else 1) for p in gen.parameters())
        info = {"class": type(gen).__name__,
                "params_real": n_real,
                "params_numel": sum(p.numel() for p in gen.parameters())}
        info.update(self.generator_info)
        s = self.settings
        return {
            "generator": info,
            "clip": self.clipper.describe(gen),
            "optimizer": describe_optimizer(self.optimizer),
            "scheduler": self.scheduler.describe(),
            "loss": {"kind": s.loss, "function": getattr(self.loss_fn, "__name__", "?"),
                     **self.loss_names},
            "batch_size": self.batches.batch_size,
            "steps_per_epoch": self.batches.batches_per_epoch,
            "train_samples": self.batches.n_samples,
            "val_samples": int(self.val_data.shape[0]),
            "eval_batch_size": s.eval_batch_size,
            "sync_every": s.sync_every,
            "device": str(self.device_),
            "compile": self.forward_fn is not self.generator,
            "cuda_graphs": self.graphed is not None,
            "step_driver": self.step_driver,
            "failure": self.monitor.settings.as_dict(),
        }
