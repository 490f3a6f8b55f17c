"""CUDA-graph capture of the whole training step (``trainer.cuda_graphs=true``).

One captured graph holds everything a step does on the device::

    x = index_select(train_data, 0, static_index)          (the resident dataset)
    zero grads (in place) -> loss = LOSS(predict_amplitude(G(x), probe), x) -> backward
    pre, post = clip(grads) -> optimizer.step() (capturable) -> monitor.record_device(...)

and a step on the host is then one 128-byte copy into ``static_index`` and ``graph.replay()``:
the per-step cost of Python, autograd bookkeeping and hundreds of kernel launches goes away.

How it stays the same computation as the eager step:

- Warm-up: the first ``warmup_steps`` full-size steps of a run are ordinary eager steps (the
  real training steps, on a side stream, as PyTorch's whole-network capture recipe does): they
  create the gradients, the optimizer state, the AGC plan, the cuFFT plans and cuBLAS/cuDNN
  handles, none of which may be created during capture. Then the graph is captured once and
  replayed for every later full-size step.
- Gradients are zeroed *in place* at the top of the graph, so ``.grad`` keeps its storage
  and ``backward`` accumulates into it (0 + g is g exactly).
- The optimizer is built with ``capturable=True`` (Adam/AdamW: step counter on the device).
  A captured step bakes in the learning rate, which is a Python float: when a scheduler
  changes it (at an epoch end) the step is captured again before the next replay.
- The last, smaller batch of an epoch (13,778 samples at batch 16: a batch of 2) runs the same
  step function eagerly: one eager step per epoch.
- ``failure.test_inject_nan_step`` becomes a device-side ``loss * where(step == k, nan, 1)``
  inside the graph (a host ``if`` would be frozen at capture).
- The failure monitors' device half is in the graph; the host advances its step count after
  each replay, and reads the monitors every ``sync_every`` steps exactly as the eager path
  does, so a NaN is reported at the step where it happened, within ``sync_every`` steps.
- Anything that replaces the tensors a graph points to (``load_training_state``) calls
  :meth:`GraphedStep.reset`; in-place loads (weights, monitors) need not.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["GraphedStep"]


class GraphedStep:
    """Run training steps of ``module`` (a :class:`~ptychostab.training.PtychoModule`) through
    a captured CUDA graph.

    Parameters
    ----------
    module : PtychoModule
        Provides ``generator``, ``optimizer`` (built capturable), ``clipper``, ``monitor``,
        ``batches``, ``train_data``, ``compute_loss``, ``failure`` and ``device_``.
    warmup_steps : int
        Eager full-size steps before the capture.
    allow_cpu : bool
        Tests only: on a CPU, run :meth:`body` eagerly for every step (never captures), so the
        graph step's arithmetic can be checked against the module's eager step without a GPU.
    """

    def __init__(self, module, warmup_steps: int = 3, *, allow_cpu: bool = False):
        dev = torch.device(module.device_)
        if dev.type != "cuda" and allow_cpu:
            warmup_steps = math.inf
        elif dev.type != "cuda" or not torch.cuda.is_available():
            raise ValueError("trainer.cuda_graphs=true needs a CUDA device; this job runs on "
                             f"{dev} (set trainer.cuda_graphs=false)")
        self.m = module
        self.device = dev
        self.batch_size = module.batches.batch_size
        data = module.train_data
        self.gather_in_graph = data.device.type == "cuda"  # resident: gather in the graph
        self.static_index = torch.zeros(self.batch_size, dtype=torch.long, device=dev)
        self.static_x = torch.zeros((self.batch_size, *data.shape[1:]), dtype=data.dtype,
                                    device=dev)
        self.warmup_steps = warmup_steps
        self.side = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.warm = 0  # eager full-size steps done since the last reset
        self.captures = 0
        self.replays = 0
        self.eager_steps = 0

    # --- the step ----------------------------------------------------------------------------
    def body(self, x: Tensor) -> None:
        """One whole step on the inputs ``x``: device work only, no host read, no branch on a
        tensor value (captured as is; also the eager warm-up and remainder steps)."""
        m = self.m
        m.optimizer.zero_grad(set_to_none=False)
        loss, _ = m.compute_loss(x)
        k = m.failure.test_inject_nan_step
        if k is not None:
            loss = loss * torch.where(m.monitor.step == int(k), math.nan, 1.0)
        loss.backward()
        pre, post = m.clipper(m.generator)
        m.optimizer.step()
        m.monitor.record_device(loss, pre, post)

    def _graph_body(self) -> None:
        if self.gather_in_graph:
            torch.index_select(self.m.train_data, 0, self.static_index, out=self.static_x)
        self.body(self.static_x)

    def __call__(self, batch: Tensor) -> None:
        """One training step on ``batch``: an index batch into ``train_data`` (int64, what the
        module's epoch loop passes) or a batch of inputs (floating point; run eagerly)."""
        is_index = not batch.is_floating_point()
        full = batch.shape[0] == self.batch_size
        if is_index and full and self.warm >= self.warmup_steps:
            key = self._key()
            if self.graph is None or key != self.key:
                self._capture(key)
            if self.gather_in_graph:
                self.static_index.copy_(batch, non_blocking=True)
            else:
                self.static_x.copy_(self.m.batches.gather(batch), non_blocking=True)
            self.graph.replay()
            self.replays += 1
        else:
            x = self.m.batches.gather(batch) if is_index else batch.to(self.device)
            if full and self.side is not None:  # warm-up on a side stream (lazy inits
                # stay off the capture stream)
                current = torch.cuda.current_stream(self.device)
                self.side.wait_stream(current)
                with torch.cuda.stream(self.side):
                    self.body(x)
                current.wait_stream(self.side)
            else:
                self.body(x)
            if full:
                self.warm += 1
            self.eager_steps += 1
        self.m.monitor.count += 1

    # --- capture -----------------------------------------------------------------------------
    def _key(self) -> tuple:
        """What a captured step bakes in and a scheduler may change: the learning rates."""
        return tuple(g["lr"] for g in self.m.optimizer.param_groups)

    def _capture(self, key: tuple) -> None:
        self.graph = None  # release the previous graph's memory pool first
        graph = torch.cuda.CUDAGraph()
        # thread_local: the job's checkpoint writer thread may be serialising CPU tensors
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._graph_body()
        self.graph, self.key = graph, key
        self.captures += 1

    def reset(self) -> None:
        """Forget the graph (and warm up again): call after replacing tensors it points to,
        e.g. ``optimizer.load_state_dict``."""
        self.graph, self.key, self.warm = None, None, 0

    def describe(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "gather_in_graph": self.gather_in_graph,
                "captures": self.captures, "replays": self.replays,
                "eager_steps": self.eager_steps}
