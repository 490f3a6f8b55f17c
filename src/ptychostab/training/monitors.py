"""Failure detection and grad-norm statistics, accumulated on the training device.

The per-step update (:meth:`StepMonitor.record`) stores the step's loss and norms with three
device ops (no host synchronisation, no Python branch on a tensor value; CUDA-graph safe). The
host reads the monitor every ``sync_every`` steps (:meth:`StepMonitor.poll`, one transfer) and
at the end of each epoch (:meth:`StepMonitor.epoch_summary`, one transfer); the detectors run
over the new steps, vectorised, just before each read. A NaN is still attributed to the exact
global step where it first appeared.

Failure kinds (records.FAILURE_KINDS):

- ``nonfinite``: NaN/Inf in the loss or the pre-clip global grad norm.
- ``diverged``: ``loss > loss_factor * running_min(loss)`` (minimum over earlier steps) or
  ``pre-clip grad norm > grad_norm_bound``, for ``patience_steps`` consecutive steps. The
  recorded step is the one that completes the streak.
- ``collapsed``: the predicted amplitude is (almost) spatially constant over the validation set
  (:class:`CollapseMeter`), or the final amplitude SSIM is below a bound (checked by the job).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["CollapseMeter", "FailureSettings", "StepMonitor", "TrainingFailure"]

# rows of the per-epoch value buffer
LOSS, PRE, POST = 0, 1, 2


@dataclass(frozen=True)
class FailureSettings:
    """The ``failure`` config node (docs/contracts.md); unknown keys raise ``TypeError``."""

    loss_factor: float = 100.0
    grad_norm_bound: float = 1.0e6
    patience_steps: int = 50
    collapse_rel_std: float | None = 1.0e-3  # None disables the check
    collapse_ssim: float | None = 0.5  # None disables the check
    test_inject_nan_step: int | None = None
    test_inject_exception_step: int | None = None

    def __post_init__(self):
        if not self.loss_factor > 1:
            raise ValueError(f"failure.loss_factor must be > 1, got {self.loss_factor!r}")
        if not self.grad_norm_bound > 0:
            raise ValueError(f"failure.grad_norm_bound must be > 0, got {self.grad_norm_bound!r}")
        if int(self.patience_steps) < 1:
            raise ValueError(f"failure.patience_steps must be >= 1, got {self.patience_steps!r}")

    @classmethod
    def from_config(cls, node) -> FailureSettings:
        return cls(**dict(node))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TrainingFailure(Exception):
    """A run failed as a result (not a crash): the job records it and exits 0."""

    def __init__(self, kind: str, *, epoch: int, step: int, message: str,
                 wall_s: float | None = None):
        super().__init__(f"{kind} at epoch {epoch}, step {step}: {message}")
        self.kind, self.epoch, self.step, self.message, self.wall_s = (
            kind, epoch, step, message, wall_s)


class StepMonitor:
    """Per-step losses and grad norms of one epoch, plus the failure detectors' state.

    The per-step part (:meth:`record_device`) only stores ``(loss, pre, post)`` in a
    preallocated buffer and advances two device counters: three kernels, no host sync, no
    Python branch on a value, and the same tensors on every call, so it can sit inside a
    captured CUDA graph. The detectors run over the steps recorded since their last run,
    vectorised, when the host reads them (:meth:`poll`, :meth:`epoch_summary`,
    :meth:`state_dict`): the result is exactly that of updating them at every step (the
    failure step is still the step where it happened), at a fraction of the per-step cost.

    Parameters
    ----------
    steps_per_epoch : int
        Size of the preallocated per-epoch buffers.
    settings : FailureSettings
    device : torch.device
    """

    def __init__(self, steps_per_epoch: int, settings: FailureSettings,
                 device: torch.device | str = "cpu"):
        self.settings = settings
        self.steps_per_epoch = int(steps_per_epoch)
        dev = torch.device(device)
        self.values = torch.full((3, self.steps_per_epoch), math.nan, device=dev)
        self.pos = torch.zeros((), dtype=torch.long, device=dev)  # index in this epoch
        self.step = torch.zeros((), dtype=torch.long, device=dev)  # next global step
        self.running_min = torch.full((), math.inf, device=dev)
        self.streak = torch.zeros((), dtype=torch.long, device=dev)
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=dev)
        self.diverged_at = torch.full((), -1, dtype=torch.long, device=dev)
        self.clipped = torch.zeros((), dtype=torch.long, device=dev)  # steps clipped, this epoch
        self.count = 0  # steps recorded this epoch (host side, no sync needed)
        self._scanned = 0  # steps of this epoch the detectors have seen

    # --- hot path ----------------------------------------------------------------------------
    def record(self, loss: Tensor, pre: Tensor, post: Tensor) -> None:
        """Store one step's loss and norms (device ops only)."""
        self.record_device(loss, pre, post)
        self.count += 1

    def record_device(self, loss: Tensor, pre: Tensor, post: Tensor) -> None:
        """The device half of :meth:`record`: safe to capture in a CUDA graph. Whoever
        replays it advances :attr:`count` once per replay."""
        v = torch.stack((loss.detach(), pre.detach(), post.detach())).to(self.values.dtype)
        self.values.index_copy_(1, self.pos.view(1), v.view(3, 1))
        torch._foreach_add_([self.pos, self.step], 1)

    # --- detectors -----------------------------------------------------------------------------
    def _scan(self) -> None:
        """Run the detectors over the steps recorded since the last scan (device ops only).

        Per step ``t`` (as an update at every step would):
        ``nonfinite_t = !finite(loss_t) or !finite(pre_t)``;
        ``over_t = loss_t > factor * min(finite losses before t) or pre_t > bound``;
        ``streak_t = over_t ? streak_{t-1} + 1 : 0``; the first ``t`` with
        ``streak_t >= patience`` is the divergence step. NaN comparisons are false.
        """
        lo, hi = self._scanned, self.count
        if hi <= lo:
            return
        s = self.settings
        dev = self.values.device
        loss, pre, post = self.values[:, lo:hi].unbind()
        n = hi - lo
        idx = torch.arange(n, device=dev)
        steps = self.step - n + idx  # global step of each scanned entry

        bad = ~(torch.isfinite(loss) & torch.isfinite(pre))
        first_bad = torch.where(bad, steps, torch.iinfo(torch.long).max).min()
        self.first_nonfinite.copy_(torch.where((self.first_nonfinite < 0) & bad.any(),
                                               first_bad, self.first_nonfinite))

        finite_loss = torch.where(torch.isnan(loss), math.inf, loss)  # fmin ignores NaN
        cummin = torch.cummin(finite_loss, 0).values
        prev_min = torch.minimum(self.running_min,
                                 torch.cat((self.running_min.view(1), cummin[:-1])))
        over = (loss > s.loss_factor * prev_min) | (pre > s.grad_norm_bound)
        last_reset = torch.cummax(torch.where(over, -1, idx), 0).values
        run = torch.where(last_reset >= 0, idx - last_reset, self.streak + idx + 1)
        hit = run >= s.patience_steps
        first_hit = torch.where(hit, steps, torch.iinfo(torch.long).max).min()
        self.diverged_at.copy_(torch.where((self.diverged_at < 0) & hit.any(),
                                           first_hit, self.diverged_at))
        self.streak.copy_(run[-1])
        self.running_min.copy_(torch.minimum(self.running_min, cummin[-1]))
        self.clipped.add_((post < pre).sum())
        self._scanned = hi

    # --- host reads --------------------------------------------------------------------------
    def poll(self, with_last: bool = False) -> dict:
        """Failure steps seen so far (one host transfer): ``{"nonfinite": int|None, ...}``.

        ``with_last``: the same transfer also carries the last recorded step's values, as
        ``"last": {"train_loss", "grad_norm_pre", "grad_norm_post"}`` (for trackers and the
        progress display: no extra synchronisation)."""
        self._scan()
        if not with_last or self.count == 0:
            nf, dv = torch.stack((self.first_nonfinite, self.diverged_at)).tolist()
            return {"nonfinite": nf if nf >= 0 else None, "diverged": dv if dv >= 0 else None}
        # float64 holds every step index exactly (< 2**53)
        packed = torch.cat((torch.stack((self.first_nonfinite, self.diverged_at)).double(),
                            self.values[:, self.count - 1].double())).tolist()
        nf, dv = int(packed[0]), int(packed[1])
        return {"nonfinite": nf if nf >= 0 else None, "diverged": dv if dv >= 0 else None,
                "last": dict(zip(("train_loss", "grad_norm_pre", "grad_norm_post"),
                                 packed[2:], strict=True))}

    def epoch_summary(self, extra: dict[str, Tensor] | None = None) -> dict:
        """Mean/median/max of this epoch's loss and grad norms, the detectors' state, and
        ``extra`` device scalars, read in one host transfer."""
        self._scan()
        extra = extra or {}
        n = self.count
        dev = self.values.device
        if n:
            v = self.values[:, :n].double()
            stats = torch.stack((v.mean(1), torch.quantile(v, 0.5, dim=1), v.max(1).values), 1)
        else:
            stats = torch.full((3, 3), math.nan, dtype=torch.float64, device=dev)
        scalars = [self.first_nonfinite, self.diverged_at, self.clipped,
                   *(t.detach() for t in extra.values())]
        packed = torch.cat((stats.reshape(-1),
                            torch.stack([t.to(device=dev, dtype=torch.float64).reshape(())
                                         for t in scalars])))
        host = packed.tolist()
        (lm, lmed, lmax, pm, pmed, pmax, qm, qmed, qmax, nf, dv, clipped, *rest) = host
        out = {
            "train_loss": lm, "train_loss_median": lmed, "train_loss_max": lmax,
            "grad_norm_pre_mean": pm, "grad_norm_pre_median": pmed, "grad_norm_pre_max": pmax,
            "grad_norm_post_mean": qm, "grad_norm_post_median": qmed, "grad_norm_post_max": qmax,
            "clip_fraction": clipped / n if n else math.nan,
            "steps": n,
            "nonfinite": int(nf) if nf >= 0 else None,
            "diverged": int(dv) if dv >= 0 else None,
        }
        out.update(zip(extra.keys(), rest, strict=True))
        return out

    def start_epoch(self) -> None:
        """Reset the per-epoch buffers (the detectors carry over)."""
        self._scan()
        self.values.fill_(math.nan)
        self.pos.zero_()
        self.clipped.zero_()
        self.count = 0
        self._scanned = 0

    # --- checkpointing -----------------------------------------------------------------------
    _TENSORS = ("values", "pos", "step", "running_min", "streak", "first_nonfinite",
                "diverged_at", "clipped")

    def state_dict(self) -> dict:
        self._scan()
        out = {k: getattr(self, k).detach().cpu().clone() for k in self._TENSORS}
        out["count"] = self.count
        return out

    def load_state_dict(self, state: dict) -> None:
        """In place: the tensors keep their storage (a captured CUDA graph stays valid)."""
        for k in self._TENSORS:
            getattr(self, k).copy_(state[k])
        self.count = int(state["count"])
        self._scanned = self.count


class CollapseMeter:
    """Spatial spread of the predicted object amplitude over a validation pass.

    ``value() = mean over patches and channels of std_{H,W}(|O|)  /  mean(|O|)``: 0 for a
    spatially constant reconstruction, O(0.1-1) for grid lines. Accumulated on the device.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)  # std sum, amp sum, n

    def update(self, amplitude: Tensor) -> None:
        """Add a batch of amplitudes ``(B, C, H, W)``."""
        a = amplitude.detach().double()
        std = a.std(dim=(-2, -1), correction=0)
        mean = a.mean(dim=(-2, -1))
        self._sums += torch.stack((std.sum(), mean.sum(), std.new_full((), float(std.numel()))))

    def value(self) -> Tensor:
        """0-d tensor, NaN if no batch was seen or the amplitudes were not finite."""
        std_sum, mean_sum, n = self._sums.unbind()
        return (std_sum / n) / (mean_sum / n)
