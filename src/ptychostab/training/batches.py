"""Training batches without DataLoader workers: device-resident data, seeded index batches.

The whole dataset is moved to the training device once when it fits
(``trainer.max_data_on_device_gb``); a batch is then one gather on the device. Epoch ``e`` visits
the samples in the order of a permutation drawn from a generator seeded with ``(seed, e)``
only, so the order does not depend on what ran before: a resumed run (even one resumed in the
middle of an epoch) sees exactly the batches an uninterrupted run would have seen.

The training module drives a whole epoch from one Lightning ``training_step`` call
(:class:`EpochLoader` yields one :class:`EpochRun` per epoch) and pulls the index batches of
that epoch from :meth:`SeededBatches.index_batches` itself: Lightning's per-batch machinery
(fetcher, hooks, progress tracking; ~0.5 ms a step on a CPU) then runs once per epoch, not
once per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["EPOCH_RUN", "EpochLoader", "EpochRun", "SeededBatches", "epoch_permutation",
           "place"]


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The sample order of ``epoch``: a CPU int64 permutation of ``range(n)``.

    Drawn on the CPU so that CPU and GPU runs of the same seed see the same order.
    """
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=gen)


def place(array, device: torch.device, budget_bytes: float) -> tuple[Tensor, bool]:
    """``(tensor, on_device)``: ``array`` on ``device`` when it fits ``budget_bytes``, else on
    the CPU (pinned when the device is CUDA, so per-batch copies can overlap)."""
    t = torch.as_tensor(np.ascontiguousarray(array))
    if t.numel() * t.element_size() <= budget_bytes:
        return t.to(device), True
    return (t.pin_memory() if device.type == "cuda" else t), False


class SeededBatches:
    """Iterable of training batches; one full pass per ``iter()``.

    Parameters
    ----------
    data : Tensor (n, ...)
        The training inputs, ideally already on ``device``.
    batch_size : int
        The last batch of an epoch holds the remainder (as a DataLoader with
        ``drop_last=False``: 13,778 samples at batch 16 give 862 steps).
    seed : int
        Training seed; the permutation of epoch ``e`` depends on ``(seed, e)`` only.
    cursor : callable () -> (epoch, first_batch)
        Read when the first batch of a pass is requested (not at ``iter()``), so the owner can
        advance its epoch counter after the previous pass; ``first_batch > 0`` resumes a
        pass in the middle.
    device : torch.device
        Where batches are delivered.

    Notes
    -----
    No ``__len__``: Lightning then ends the epoch when the pass is exhausted, which is what a
    resumed partial epoch needs.
    """

    def __init__(self, data: Tensor, batch_size: int, seed: int,
                 cursor: Callable[[], tuple[int, int]], device: torch.device | None = None):
        self.data = data
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.cursor = cursor
        self.device = torch.device(device) if device is not None else data.device

    @property
    def n_samples(self) -> int:
        return self.data.shape[0]

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        return epoch_permutation(self.n_samples, self.seed, epoch)

    def index_batches(self, epoch: int, first: int = 0) -> list[Tensor]:
        """Sample indices of batches ``first..`` of ``epoch``, on the data's device (one
        host-to-device copy of the permutation per call; the batches are views of it)."""
        perm = self.order(epoch).to(self.data.device)
        return list(perm.split(self.batch_size))[first:]

    def gather(self, index: Tensor) -> Tensor:
        """The training inputs of one index batch, on :attr:`device`."""
        return self.data.index_select(0, index).to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Tensor]:
        # A generator: nothing below runs until the first batch is requested.
        epoch, first = self.cursor()
        for index in self.index_batches(epoch, first):
            yield self.gather(index)


class EpochRun:
    """The one item :class:`EpochLoader` yields per epoch: "train the current epoch" (the
    module reads its own position; this object carries nothing). Not a tensor and without a
    ``to`` method, so Lightning hands it to ``training_step`` untouched."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EPOCH_RUN"


EPOCH_RUN = EpochRun()


class EpochLoader:
    """What Lightning iterates: one :data:`EPOCH_RUN` per epoch, no ``__len__``."""

    def __iter__(self) -> Iterator[EpochRun]:
        yield EPOCH_RUN
