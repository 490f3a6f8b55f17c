"""Benchmark: Stage A training steps per second, the job's path against a bare PyTorch loop
and against the idiomatic per-batch Lightning loop.

    .venv/bin/python benchmarks/train_step.py                      # GPU if present, Stage A arm
    .venv/bin/python benchmarks/train_step.py --device cpu --sizes small --steps 60 --warmup 10
    .venv/bin/python benchmarks/train_step.py --device cpu --sizes tiny   # Lightning overhead

What is timed, per variant (depth x clip) and implementation:

- ``bare``: a plain PyTorch loop: same generator and initial weights, same data on the device,
  same optimizer (``build_optimizer``: Adam, foreach), same clipping (``GradientClipper``), same
  seeded batch order (``epoch_permutation``); no monitors, no records, no Lightning.
- ``lightning`` (issue 21): the idiomatic per-batch LightningModule run by ``Trainer.fit``:
  same generator and initial weights, loss (``predict_amplitude`` + ``get_loss``), optimizer
  and batch order as bare; ``training_step`` per batch returning the loss, ``self.log`` of it,
  automatic optimisation; clipping by the Trainer's ``gradient_clip_val`` /
  ``gradient_clip_algorithm`` (norm: Lightning's ``clip_grad_norm_``; value: through
  ``configure_gradient_clipping`` with the project's complex-aware clamp, since
  ``clip_grad_value_`` refuses complex gradients), AGC (``GradientClipper``) in
  ``on_before_optimizer_step``. Data placed as ours places it: the training set on the device,
  the loader an iterable of device-side index slices of the epoch's seeded permutation (one
  host-to-device copy per epoch, none per batch), ``index_select`` in ``training_step``.
  Trainer flags as ours' Trainer: no logger (``self.log`` collects on the device, nothing is
  written), no checkpointing, no progress bar or model summary. Timed by a Callback
  (``on_train_batch_start`` of batch ``warmup`` to ``on_train_batch_end`` of the last).
- ``ours``: the job itself: ``runs.job.Job.setup()`` builds the PtychoModule and the Lightning
  Trainer exactly as ``run_job`` does (device-resident data, monitors, sync every 50 steps,
  validation, last/best.ckpt and history.csv at each epoch end); only ``load_data`` is
  substituted (synthetic data) and the generator gets the shared initial weights.
- ``graphs``: ``ours`` with ``trainer.cuda_graphs=true`` (CUDA only);
  ``compile``: ``ours`` with ``trainer.compile=true``; ``compile_graphs``: both.

A round is one epoch of ``warmup + steps`` full batches; the time of its last ``steps`` steps is
taken with CUDA events on the GPU (``perf_counter`` on the CPU): from before step ``warmup`` is
issued to after the last step returns (so ours' sync at the epoch's last step is inside).
Round 0 of each implementation is warm-up; the table gives the median of the ``--repeats``
timed rounds (the JSON every round). On the CPU the implementations run round-robin,
interleaved (a shared machine's load drifts); on the GPU one after another, each alone on the
card, so that its peak memory is its own. ``epoch end`` is ours' validation + records +
checkpoint snapshot (the write itself is in a background thread). After the run the final
weights of each implementation are compared with bare's (same batches, same steps):
``max|dW|`` relative to ``max|W|``, exactly 0 for ``ours`` and ``lightning`` on the CPU (the
same arithmetic: Lightning's norm clip is ``clip_grad_norm_``, i.e. the same total norm and
``clip_grads_with_norm_`` the project's clipper calls; Adam's ``step(closure)`` is Adam's
step). Ratios (``ours/bare``, ``lightning/bare``, ``ours/lightning`` and, on CUDA,
``graphs/bare``, ``graphs/lightning``) are printed per variant and kept in the JSON.

FLOPs: counted once per variant for one forward + loss + backward at the batch size with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, complex ones
counted as real; FFTs and elementwise work are not counted): TFLOP/s is a lower bound of work.

Packing (issue 14, ``--pack 1,2,4,8``; replaces the table above): K seeds of the first
variant trained in one process by the pack engine (``runs/pack.py``: each member its own
``Job`` setup on the shared placed data, its own CUDA stream, the members' steps in turn);
timed like ``ours`` (the last ``steps`` steps of each round, all members, ``synchronize`` then
``perf_counter``), reported as the aggregate steps/s of the K members and its ratio to K=1.
Then exactness (``--pack-check K``, default 2; 0 skips): K seeds through ``run_job`` alone and
through ``run_pack``, 2 epochs of ``warmup + steps`` steps, per-epoch train and validation
losses compared (bit-identical expected where the same kernels run; the maximum relative
difference is printed; tolerance if not identical: 1e-5 relative, issue 14).

Targets (issue 7, on an H100/H200): ours/bare >= 0.95 at batch 16; >= 200 steps/s for the
depth-4 hybrid at batch 16 (a Stage A epoch of 862 steps in <= 4.5 s); depth 8 runs at N=64.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ptychostab.data.spec import ProbeConfig
from ptychostab.physics.forward import predict_amplitude
from ptychostab.physics.losses import get_loss
from ptychostab.physics.probe import make_probe
from ptychostab.runs import job as job_mod
from ptychostab.runs.signals import PreemptionGuard
from ptychostab.training.batches import epoch_permutation
from ptychostab.training.clipping import GradientClipper, clip_grad_value_complex_
from ptychostab.training.optim import build_optimizer
from ptychostab.training.settings import TrainerSettings
from ptychostab.training.testing import tiny_config

SIZES = {  # N, finest width, modes, validation patterns (Stage A: 2,178 test patterns)
    "stage_a": {"N": 64, "hidden": 32, "modes": 12, "val": 2178},
    "small": {"N": 32, "hidden": 8, "modes": 6, "val": 64},
    "tiny": {"N": 16, "hidden": 2, "modes": 4, "val": 16},
}
CLIP_VALUES = {"none": None, "norm": 1.0, "value": 0.1, "agc": 0.01}
BASELINES = ("bare", "lightning")  # not the job: no IMPL_FLAGS
DEFAULT_VARIANTS = "4:norm,4:agc,8:norm"
STAGE_A_STEPS_PER_EPOCH = 862
STAGE_A_RUNS = 30  # 3 arms x 10 seeds (experiments/stage_a.yaml)
IMPL_FLAGS = {"ours": {},
              # the per-run sinks' cost (issues 12 and 15): no sink at all, the drift probe
              # only, and the probe plus a CSV tracker logging every sync point
              "ours_bare_sinks": {"diagnostics.every_n_epochs": 0, "trainer.progress": "none"},
              "ours_probe": {"trainer.progress": "none"},
              "ours_tracked": {"logger.csv": {"enabled": True}, "trainer.progress": "none"},
              "graphs": {"trainer.cuda_graphs": True},
              "compile": {"trainer.compile": True},
              "compile_graphs": {"trainer.compile": True, "trainer.cuda_graphs": True}}


# --- configuration and data ------------------------------------------------------------------
def variant_config(args, depth: int, clip: str, impl: str = "ours"):
    """The composed config of one arm: the real Stage A values where ``--sizes stage_a``."""
    size = SIZES[args.sizes]
    overrides = {
        "depth": depth, "seed": args.seed,
        "data.N": size["N"] if args.N is None else args.N,
        "arch.name": "hybrid", "arch.hidden_channels": args.hidden or size["hidden"],
        "arch.n_modes": args.modes or size["modes"], "arch.corners": args.corners,
        "clip.algorithm": clip, "clip.value": CLIP_VALUES[clip],
        "trainer.batch_size": args.batch, "trainer.max_epochs": 10_000,
        "trainer.accelerator": args.device, "trainer.tf32": args.tf32,
        # a benchmark must not stop on an accidental "collapse" of random data
        "failure.collapse_rel_std": None, "failure.collapse_ssim": None,
        **IMPL_FLAGS[impl],
    }
    if args.data == "stage_a":
        overrides.update({"data.name": "grid_lines_n64", "data.N": 64, "data.size": 392,
                          "data.n_lines": 400, "data.nimgs_train": 2, "data.nimgs_test": 2,
                          "data.outer_offset_train": 8, "data.outer_offset_test": 20})
    return tiny_config(**overrides)


def make_data(args, cfg) -> types.SimpleNamespace:
    """``train_amp`` of exactly ``(warmup + steps) * batch`` patterns, ``test_amp``, ``probe``."""
    n_train = (args.warmup + args.steps) * args.batch
    if args.data == "stage_a":
        real = job_mod.load_data(cfg)  # simulated once, then cached (PTYCHOSTAB_CACHE)
        if n_train > len(real.train_amp):
            raise SystemExit(f"--warmup + --steps = {args.warmup + args.steps} batches; the "
                             f"Stage A epoch has {len(real.train_amp) // args.batch}")
        return types.SimpleNamespace(train_amp=real.train_amp[:n_train],
                                     test_amp=real.test_amp, probe=real.probe)
    N = int(cfg.data.N)
    rng = np.random.default_rng(args.seed)
    amp = lambda n: (0.05 + rng.random((n, 1, N, N), dtype=np.float32))  # noqa: E731
    probe = make_probe(ProbeConfig(**dict(cfg.data.probe)), N)
    return types.SimpleNamespace(train_amp=amp(n_train), test_amp=amp(SIZES[args.sizes]["val"]),
                                 probe=probe)


# --- timing ----------------------------------------------------------------------------------
class Span:
    """Seconds between ``start()`` and ``stop()``: CUDA events, or ``perf_counter`` on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t0 = self.t1 = None

    def start(self) -> None:
        if self.cuda:
            self.t0 = torch.cuda.Event(enable_timing=True)
            self.t0.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.t1 = torch.cuda.Event(enable_timing=True)
            self.t1.record()
        else:
            self.t1 = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self.t1.synchronize()
            return self.t0.elapsed_time(self.t1) / 1e3
        return self.t1 - self.t0


class TimedBatches:
    """Stands in for the module's ``SeededBatches``: same batches; starts the span before the
    ``warmup``-th batch of an epoch is handed out and stops it when the epoch's batches are
    exhausted (after the last step returned)."""

    def __init__(self, inner, warmup: int, device: torch.device):
        self.inner, self.warmup, self.device = inner, warmup, device
        self.span: Span | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def index_batches(self, epoch: int, first: int = 0):
        batches = self.inner.index_batches(epoch, first)
        span = self.span = Span(self.device)

        def timed():
            for j, index in enumerate(batches, start=first):
                if j == self.warmup:
                    span.start()
                yield index
            span.stop()
        return timed()


class Bare:
    """The baseline loop (see the module docstring)."""

    def __init__(self, args, cfg, data, init: dict, device: torch.device):
        self.device, self.warmup, self.seed = device, args.warmup, int(cfg.seed)
        self.gen = job_mod.build_model(cfg).to(device)
        self.gen.load_state_dict(init)
        settings = TrainerSettings.from_config(cfg.trainer)
        self.batch = settings.batch_size
        self.opt = build_optimizer(self.gen.parameters(), settings)
        self.clipper = GradientClipper.from_config(cfg.clip)
        self.loss_fn = get_loss(settings.loss)
        self.data = torch.as_tensor(np.ascontiguousarray(data.train_amp)).to(device)
        self.probe = torch.as_tensor(np.asarray(data.probe)).to(device)
        self.epoch = 0

    def round(self) -> tuple[float, None]:
        gen, opt, clipper, loss_fn, data, probe = (self.gen, self.opt, self.clipper,
                                                   self.loss_fn, self.data, self.probe)
        perm = epoch_permutation(data.shape[0], self.seed, self.epoch).to(self.device)
        span = Span(self.device)
        for j, index in enumerate(perm.split(self.batch)):
            if j == self.warmup:
                span.start()
            x = data.index_select(0, index)
            loss = loss_fn(predict_amplitude(gen(x), probe), x)
            loss.backward()
            clipper(gen)
            opt.step()
            opt.zero_grad(set_to_none=True)
        span.stop()
        self.epoch += 1
        return span.seconds(), None

    def weights(self) -> dict:
        return self.gen.state_dict()


class IndexBatches:
    """The per-batch contender's training loader: one epoch of index batches per ``iter()``,
    on the device, in the seeded order of ``epoch_permutation`` (as bare and ours: the
    permutation is moved to the device once per epoch and split into views; no per-batch
    host-to-device copy, no workers, no collation). ``cursor()`` gives the epoch."""

    def __init__(self, n: int, batch: int, seed: int, device: torch.device, cursor):
        self.n, self.batch, self.seed, self.device, self.cursor = n, batch, seed, device, cursor

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)

    def __iter__(self):
        perm = epoch_permutation(self.n, self.seed, self.cursor()).to(self.device)
        yield from perm.split(self.batch)


class PerBatchModule(L.LightningModule):
    """The idiomatic per-batch LightningModule: ``training_step`` per batch returning the loss,
    ``self.log`` per step, automatic optimisation (Lightning zeroes the gradients, calls
    ``backward`` and ``optimizer.step``); gradient clipping by the Trainer
    (``gradient_clip_val`` / ``gradient_clip_algorithm``) for norm and value, the value clip
    through ``configure_gradient_clipping`` (``torch.nn.utils.clip_grad_value_`` refuses the
    spectral layers' complex gradients: the project's complex-aware clamp instead), AGC in
    ``on_before_optimizer_step`` (the project's ``GradientClipper``, as bare uses it)."""

    def __init__(self, generator, probe, train_amp, settings: TrainerSettings,
                 clipper: GradientClipper, seed: int, device: torch.device):
        super().__init__()
        self.generator = generator
        self.register_buffer("probe", probe, persistent=False)
        self.train_amp = train_amp  # device-resident, not a buffer: Lightning leaves it there
        self.settings = settings
        self.loss_fn = get_loss(settings.loss)
        self.agc = clipper if clipper.algorithm == "agc" else None
        self.epoch = 0  # the trainer is rebuilt per round: our own epoch count, for the order
        self.loader = IndexBatches(train_amp.shape[0], settings.batch_size, seed, device,
                                   cursor=lambda: self.epoch)
        # built once and handed to every round's Trainer, so that Adam's state carries over
        self.optimizer = build_optimizer(generator.parameters(), settings)

    def training_step(self, index, batch_idx):
        x = self.train_amp.index_select(0, index)
        loss = self.loss_fn(predict_amplitude(self.generator(x), self.probe), x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return self.optimizer

    def train_dataloader(self):
        return self.loader

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.agc is not None:
            self.agc(self.generator)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        if gradient_clip_val and gradient_clip_algorithm == "value":
            clip_grad_value_complex_(self.generator.parameters(), gradient_clip_val)
        else:  # Lightning's own (norm: torch.nn.utils.clip_grad_norm_)
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_epoch_end(self) -> None:
        self.epoch += 1


class StepTimer(L.Callback):
    """Times batches ``warmup..`` of an epoch with the others' ``Span``: started in
    ``on_train_batch_start`` of batch ``warmup``, stopped in ``on_train_batch_end`` of the
    last batch (CUDA events on the GPU, the end event synchronised; ``perf_counter`` on a
    CPU)."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device = warmup, device
        self.span: Span | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.span = Span(self.device)
            self.span.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self.span.stop()


class PerBatchLightning:
    """The idiomatic baseline (issue 21): :class:`PerBatchModule` run by ``Trainer.fit``, one
    epoch per round, with the Trainer flags ours' Trainer has (no logger, no checkpointing, no
    progress bar or model summary, deterministic on a CPU): ``self.log`` collects each step's
    loss on the device and nothing is written to disk."""

    def __init__(self, args, cfg, data, init: dict, device: torch.device, root: Path):
        self.device, self.root = device, root
        gen = job_mod.build_model(cfg).to(device)
        gen.load_state_dict(init)
        settings = TrainerSettings.from_config(cfg.trainer)
        self.clipper = GradientClipper.from_config(cfg.clip)
        train = torch.as_tensor(np.ascontiguousarray(data.train_amp)).to(device)
        probe = torch.as_tensor(np.asarray(data.probe)).to(device)
        self.module = PerBatchModule(gen, probe, train, settings, self.clipper, int(cfg.seed),
                                     device)
        algo = self.clipper.algorithm
        self.clip_kwargs = ({"gradient_clip_val": self.clipper.value,
                             "gradient_clip_algorithm": algo}
                            if algo in ("norm", "value") else {})
        self.timer = StepTimer(args.warmup, device)
        self.trainer: L.Trainer | None = None

    def make_trainer(self, callbacks=()) -> L.Trainer:
        return L.Trainer(
            accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1,
            max_epochs=1, precision="32-true", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            deterministic=self.device.type == "cpu", default_root_dir=self.root,
            callbacks=[self.timer, *callbacks], **self.clip_kwargs)

    def round(self) -> tuple[float, None]:
        self.trainer = self.make_trainer()
        self.trainer.fit(self.module)
        return self.timer.span.seconds(), None

    def weights(self) -> dict:
        return self.module.generator.state_dict()


class Ours:
    """The job's path: ``Job.setup()`` then one ``trainer.fit`` epoch per round."""

    def __init__(self, args, cfg, data, init: dict, device: torch.device, root: Path):
        job_mod.load_data = lambda _cfg: data  # the one substitution
        root.mkdir(parents=True, exist_ok=True)
        self.job = job_mod.Job(cfg, root, {}, "bench", [], PreemptionGuard())
        self.job.setup()
        m = self.module = self.job.module
        m.generator.load_state_dict(init)
        self.timed = m.batches = TimedBatches(m.batches, args.warmup, device)
        self.epoch_end_s: list[float] = []
        real_end = type(m).on_train_epoch_end

        def on_train_epoch_end(module):
            t0 = time.perf_counter()
            real_end(module)
            self.epoch_end_s.append(time.perf_counter() - t0)
        m.on_train_epoch_end = types.MethodType(on_train_epoch_end, m)

    def round(self) -> tuple[float, float]:
        self.job.trainer = self.job._trainer(1)
        self.job.trainer.fit(self.module)
        return self.timed.span.seconds(), self.epoch_end_s[-1]

    def weights(self) -> dict:
        return self.module.generator.state_dict()

    def close(self) -> None:
        self.job.drain_writes()
        self.job.writer.close()


# --- FLOPs -----------------------------------------------------------------------------------
def count_flops(cfg, data, device: torch.device, batch: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    gen = job_mod.build_model(cfg).to(device)
    x = torch.as_tensor(np.ascontiguousarray(data.train_amp[:batch])).to(device)
    probe = torch.as_tensor(np.asarray(data.probe)).to(device)
    loss_fn = get_loss(str(cfg.trainer.loss))
    with FlopCounterMode(display=False) as counter:
        loss_fn(predict_amplitude(gen(x), probe), x).backward()
    return int(counter.get_total_flops())


# --- driver ----------------------------------------------------------------------------------
def dry_run_estimate(cfg) -> int | None:
    """The dry run's training-memory estimate for this arm (launch.estimate.describe_config)."""
    from omegaconf import OmegaConf

    from ptychostab.launch.estimate import describe_config
    try:
        info = describe_config(OmegaConf.to_container(cfg, resolve=True))
    except Exception as err:  # the figure is for comparison only
        logging.warning("no dry-run estimate: %s", err)
        return None
    value = info.get("memory_bytes_estimate")
    return int(value) if isinstance(value, (int, float)) else None


def peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def compare(weights: dict, reference: dict) -> float:
    """max |W - W_ref| / max |W_ref| over all tensors (complex ones by modulus: ``double()``
    would drop their imaginary parts, i.e. half of every spectral weight)."""
    wide = lambda t: t.to(torch.complex128) if t.is_complex() else t.double()  # noqa: E731
    diff = max(float((wide(a) - wide(b)).abs().max())
               for a, b in zip(weights.values(), reference.values(), strict=True))
    scale = max(float(wide(b).abs().max()) for b in reference.values())
    return diff / scale


def build(impl: str, args, variant: tuple[int, str], data, init, device, root: Path):
    depth, clip = variant
    cfg = variant_config(args, depth, clip, "ours" if impl in BASELINES else impl)
    if impl == "bare":
        return Bare(args, cfg, data, init, device)
    if impl == "lightning":
        return PerBatchLightning(args, cfg, data, init, device, root / f"{impl}-d{depth}-{clip}")
    return Ours(args, cfg, data, init, device, root / f"{impl}-d{depth}-{clip}")


def run_variant(args, variant, device: torch.device, root: Path) -> dict:
    depth, clip = variant
    cfg = variant_config(args, depth, clip)
    data = make_data(args, cfg)
    torch.manual_seed(args.seed)
    init = copy.deepcopy(job_mod.build_model(cfg).state_dict())
    n_real = sum(t.numel() * (2 if t.is_complex() else 1) for t in init.values())
    flops = count_flops(cfg, data, device, args.batch)
    out = {"depth": depth, "clip": clip, "params_real": n_real, "flops_per_step": flops,
           "memory_bytes_estimate": dry_run_estimate(cfg), "impls": {}}
    impls = [i for i in args.impls if device.type == "cuda" or "graphs" not in i]
    rounds = args.repeats + 1
    results = {i: {"round_s": [], "epoch_end_s": [], "peak_bytes": None, "error": None}
               for i in impls}
    runners = {}

    def one_round(impl):
        r = results[impl]
        if r["error"]:
            return
        try:
            seconds, end = runners[impl].round()
        except Exception as err:  # report and go on: one broken path must not hide the rest
            r["error"] = f"{type(err).__name__}: {err}"[:300]
            logging.exception("%s failed", impl)
            return
        r["round_s"].append(seconds)
        if end is not None:
            r["epoch_end_s"].append(end)

    def start(impl):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            runners[impl] = build(impl, args, variant, data, init, device, root)
        except Exception as err:
            results[impl]["error"] = f"{type(err).__name__}: {err}"[:300]
            logging.exception("%s failed to build", impl)

    def finish(impl, final):
        r = results[impl]
        runner = runners.pop(impl, None)
        if runner is None:
            return
        if not r["error"]:
            final[impl] = {k: v.detach().cpu().clone() for k, v in runner.weights().items()}
        r["peak_bytes"] = peak_bytes(device)
        if hasattr(runner, "close"):
            runner.close()
        del runner

    final: dict = {}
    if args.interleave:  # round-robin; peak memory is then that of all of them together
        for impl in impls:
            start(impl)
        for k in range(rounds):
            order = impls[k % len(impls):] + impls[:k % len(impls)]
            for impl in order:
                one_round(impl)
        for impl in impls:
            finish(impl, final)
    else:
        for impl in impls:
            start(impl)
            for _ in range(rounds):
                one_round(impl)
            finish(impl, final)

    steps = args.steps
    for impl in impls:
        r = results[impl]
        timed = r["round_s"][1:]
        row = {"error": r["error"], "round_s": r["round_s"], "epoch_end_s": r["epoch_end_s"],
               "peak_bytes": r["peak_bytes"]}
        if timed and not r["error"]:
            sec = statistics.median(timed)
            row.update(steps_per_s=steps / sec, ms_per_step=1e3 * sec / steps,
                       best_steps_per_s=steps / min(timed),
                       tflops=flops * steps / sec / 1e12)
            if r["epoch_end_s"]:
                row["epoch_end_ms"] = 1e3 * statistics.median(r["epoch_end_s"][1:] or
                                                              r["epoch_end_s"])
        if impl in final and "bare" in final:
            row["weights_rel_diff_vs_bare"] = compare(final[impl], final["bare"])
        out["impls"][impl] = row
    bare = out["impls"].get("bare", {})
    per_batch = out["impls"].get("lightning", {})
    for row in out["impls"].values():
        if "steps_per_s" in row and "steps_per_s" in bare:
            row["ratio"] = row["steps_per_s"] / bare["steps_per_s"]
        if "steps_per_s" in row and "steps_per_s" in per_batch:
            row["ratio_vs_lightning"] = row["steps_per_s"] / per_batch["steps_per_s"]
    out["ratios"] = ratios(out["impls"])
    out["ratios_best"] = ratios(out["impls"], "best_steps_per_s")
    return out


def ratios(rows: dict, key: str = "steps_per_s") -> dict:
    """The loop comparisons of issue 21: ``a/b`` = steps/s of ``a`` over those of ``b`` (the
    median rounds; ``key="best_steps_per_s"``: the fastest round of each, the least disturbed
    figure on a shared machine)."""
    pairs = [("ours", "bare"), ("lightning", "bare"), ("ours", "lightning"),
             ("graphs", "bare"), ("graphs", "lightning"), ("graphs", "ours")]
    return {f"{a}/{b}": rows[a][key] / rows[b][key] for a, b in pairs
            if key in rows.get(a, {}) and key in rows.get(b, {})}


def table(results: list[dict], args) -> str:
    head = (f"{'variant':<12} {'impl':<15} {'steps/s':>8} {'best':>8} {'ms/step':>8} "
            f"{'x bare':>9} "
            f"{'x lightning':>11} {'peak MiB':>9} {'est MiB':>8} {'peak/est':>8} {'TFLOP/s':>8} "
            f"{'epoch end ms':>12} {'max|dW| rel':>11}")
    lines = [head, "-" * len(head)]
    for res in results:
        name = f"d{res['depth']} {res['clip']}"
        est_b = res.get("memory_bytes_estimate")
        est = "-" if est_b is None else f"{est_b / 2**20:.0f}"
        for impl, row in res["impls"].items():
            if row.get("error"):
                lines.append(f"{name:<12} {impl:<15} ERROR {row['error']}")
                continue
            if "steps_per_s" not in row:
                continue
            peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.0f}"
            frac = ("-" if row["peak_bytes"] is None or not est_b or args.interleave
                    else f"{row['peak_bytes'] / est_b:.2f}")
            end = f"{row['epoch_end_ms']:.1f}" if "epoch_end_ms" in row else "-"
            dw = row.get("weights_rel_diff_vs_bare")
            dw = "-" if dw is None or impl == "bare" else f"{dw:.1e}"
            ratio = f"{row['ratio']:.3f}" if "ratio" in row else "-"
            vs_pb = f"{row['ratio_vs_lightning']:.3f}" if "ratio_vs_lightning" in row else "-"
            lines.append(f"{name:<12} {impl:<15} {row['steps_per_s']:8.1f} "
                         f"{row['best_steps_per_s']:8.1f} {row['ms_per_step']:8.2f} "
                         f"{ratio:>9} {vs_pb:>11} {peak:>9} {est:>8} {frac:>8} "
                         f"{row['tflops']:8.3f} {end:>12} {dw:>11}")
    lines += ratio_lines(results)
    return "\n".join(lines)


def ratio_lines(results: list[dict]) -> list[str]:
    """One line per variant: ours/bare, lightning/bare, ours/lightning (and graphs/...)."""
    out = []
    for res in results:
        for key, what in (("ratios", "median rounds"), ("ratios_best", "best rounds")):
            r = res.get(key) or {}
            if r:
                out.append(f"d{res['depth']} {res['clip']} steps/s ratios ({what}): "
                           + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    return out


def projection(results: list[dict]) -> list[str]:
    """A Stage A epoch (862 steps) and a 50-epoch run at the measured rates."""
    out = []
    for res in results:
        for impl, row in res["impls"].items():
            if impl == "bare" or "steps_per_s" not in row:
                continue
            epoch = STAGE_A_STEPS_PER_EPOCH / row["steps_per_s"] + row.get("epoch_end_ms",
                                                                           0) / 1e3
            grid_h = STAGE_A_RUNS * 50 * epoch / 3600
            out.append(f"  d{res['depth']} {res['clip']} {impl}: epoch {epoch:.2f} s, "
                       f"50 epochs {50 * epoch / 60:.1f} min; Stage A grid (3 arms x 10 seeds "
                       f"x 50 epochs) {grid_h:.2f} h of this device")
    return out


def sink_costs(results: list[dict]) -> list[str]:
    """What the per-run sinks cost (issues 12 and 15), against ``ours_bare_sinks`` measured in
    the same run: the drift probe's extra epoch-end time as a share of a Stage A epoch (862
    steps at the bare-sinks rate; target < 1%), and the step rate with a tracker logging at
    every sync point (the per-step values ride on the sync point's one transfer)."""
    out = []
    for res in results:
        rows = res["impls"]
        base = rows.get("ours_bare_sinks", {})
        if "steps_per_s" not in base:
            continue
        epoch = STAGE_A_STEPS_PER_EPOCH / base["steps_per_s"] + base.get("epoch_end_ms", 0) / 1e3
        name = f"d{res['depth']} {res['clip']}"
        probe = rows.get("ours_probe", {})
        if "epoch_end_ms" in probe and "epoch_end_ms" in base:
            extra = (probe["epoch_end_ms"] - base["epoch_end_ms"]) / 1e3
            out.append(f"  {name}: drift probe +{1e3 * extra:.1f} ms per epoch end = "
                       f"{100 * extra / epoch:.2f}% of an 862-step (Stage A) epoch at this size "
                       f"({epoch:.2f} s)")
        tracked = rows.get("ours_tracked", {})
        if "steps_per_s" in tracked:
            out.append(f"  {name}: step rate with a CSV tracker at every sync point "
                       f"{tracked['steps_per_s']:.1f} vs {base['steps_per_s']:.1f} steps/s "
                       f"without sinks (ratio {tracked['steps_per_s'] / base['steps_per_s']:.3f})")
    return out


# --- packing (issue 14) ----------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pack_speed(args, device: torch.device, root: Path, k: int) -> dict:
    """Aggregate steps/s of ``k`` packed members (see the module docstring)."""
    from omegaconf import OmegaConf

    from ptychostab.runs import pack as pack_mod
    from ptychostab.runs.recorder import RunRecorder

    depth, clip = args.variant_list[0]
    impl = "graphs" if args.pack_graphs else "ours"
    cfg0 = variant_config(args, depth, clip, impl)
    data = make_data(args, cfg0)
    job_mod.load_data = lambda _cfg: data  # the one substitution, as in Ours
    shared, guard, jobs = pack_mod._Shared(), PreemptionGuard(), []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(k):
        cfg = variant_config(args, depth, clip, impl)
        cfg.seed = args.seed + i
        run_dir = root / f"pack{k}" / f"seed={cfg.seed}"
        rec = RunRecorder(run_dir, config=OmegaConf.to_container(cfg, resolve=True),
                          arm={}, arm_id="bench", sinks=[], pack_id=f"bench-{k}")
        job = pack_mod._Member(pack_mod.Member(cfg, run_dir), guard, rec, shared)
        job.setup()
        jobs.append(job)
    pack_mod.fit_settings(device)
    for job in jobs:
        job.stream = pack_mod.member_stream(device)
        job.steps = pack_mod.training_steps(job.module)
    n = jobs[0].module.batches.batches_per_epoch
    times = []
    for _ in range(1 + args.repeats):  # round 0: warm-up
        for i in range(n):
            if i == args.warmup:
                _sync(device)
                t0 = time.perf_counter()
            for job in jobs:
                with job.active(stream=True):
                    next(job.steps)
        _sync(device)
        times.append(time.perf_counter() - t0)
        for job in jobs:  # the epoch ends (validation, records), untimed
            with job.active(stream=True):
                assert next(job.steps) == -1
    for job in jobs:
        job.rec.end(None)
    sec = statistics.median(times[1:])
    return {"k": k, "aggregate_steps_per_s": k * args.steps / sec,
            "member_steps_per_s": args.steps / sec, "rounds_s": times,
            "peak_bytes": peak_bytes(device), "impl": impl}


def pack_exactness(args, device: torch.device, root: Path, k: int) -> dict:
    """Per-epoch losses of ``k`` seeds alone (``run_job``) and packed (``run_pack``)."""
    from ptychostab.runs import records
    from ptychostab.runs.pack import Member, run_pack

    depth, clip = args.variant_list[0]
    impl = "graphs" if args.pack_graphs else "ours"
    cfgs = []
    for i in range(k):
        cfg = variant_config(args, depth, clip, impl)
        cfg.seed, cfg.trainer.max_epochs = args.seed + i, 2
        cfgs.append(cfg)
    data = make_data(args, cfgs[0])
    job_mod.load_data = lambda _cfg: data
    # the training is compared; the final evaluation needs the simulated objects, which
    # synthetic data lack: it is left out (both ways)
    job_mod.evaluate_run = lambda *_a: ({}, None, None)
    alone = [job_mod.run_job(c, run_dir=root / "alone" / f"seed={c.seed}", arm={},
                             arm_id="bench", overrides=[], sinks=[]) for c in cfgs]
    packed = run_pack([Member(c, root / "packed" / f"seed={c.seed}") for c in cfgs],
                      pack_id="bench-exact")
    same, total, worst = 0, 0, 0.0
    for c in cfgs:
        a = records.read_history(root / "alone" / f"seed={c.seed}" / records.HISTORY).data
        b = records.read_history(root / "packed" / f"seed={c.seed}" / records.HISTORY).data
        for ra, rb in zip(a, b, strict=True):
            for key in ("train_loss", "val_loss"):
                total += 1
                same += ra[key] == rb[key]
                worst = max(worst, abs(ra[key] - rb[key]) / max(abs(ra[key]), 1e-30))
    return {"k": k, "statuses": [r["status"] for r in alone + packed], "identical": same,
            "compared": total, "max_rel_diff": worst, "impl": impl}


def pack_main(args, device: torch.device, dev_name: str) -> int:
    out = {"pack_speed": [], "pack_exactness": None}
    with tempfile.TemporaryDirectory(prefix="train-step-pack-") as tmp:
        for k in args.pack:
            out["pack_speed"].append(pack_speed(args, device, Path(tmp), k))
            r = out["pack_speed"][-1]
            print(f"pack K={k}: {r['aggregate_steps_per_s']:.1f} aggregate steps/s "
                  f"({r['member_steps_per_s']:.1f} per member)", flush=True)
            gc.collect()
        if args.pack_check:
            out["pack_exactness"] = pack_exactness(args, device, Path(tmp), args.pack_check)
    if args.json:
        meta = {"device": dev_name, "torch": torch.__version__,
                "args": {k: v for k, v in vars(args).items() if k != "variant_list"}}
        Path(args.json).write_text(json.dumps({"meta": meta, **out}, indent=2, default=str))
    depth, clip = args.variant_list[0]
    base = out["pack_speed"][0]["aggregate_steps_per_s"] if out["pack_speed"] else None
    print(f"\nPacked seeds (d{depth} {clip}, {out['pack_speed'][0]['impl'] if base else '-'}, "
          f"batch {args.batch}, {args.steps} timed steps per member per round):")
    head = f"{'K':>3} {'aggregate steps/s':>18} {'per member':>11} {'x K=1':>7} {'peak MiB':>9}"
    print(head + "\n" + "-" * len(head))
    for r in out["pack_speed"]:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        print(f"{r['k']:>3} {r['aggregate_steps_per_s']:18.1f} {r['member_steps_per_s']:11.1f} "
              f"{r['aggregate_steps_per_s'] / base:7.2f} {peak:>9}")
    ex = out["pack_exactness"]
    if ex is not None:
        verdict = "bit-identical" if ex["identical"] == ex["compared"] else (
            "within 1e-5 relative" if ex["max_rel_diff"] <= 1e-5 else "NOT within 1e-5")
        print(f"exactness K={ex['k']} (2 epochs, train+val loss per epoch): {ex['identical']}/"
              f"{ex['compared']} identical, max rel diff {ex['max_rel_diff']:.2e}: {verdict}; "
              f"statuses {ex['statuses']}")
    print("target on H100/H200: K=8 aggregate >= 3x K=1")
    return 0


def write_json(args, dev_name: str, results: list[dict]) -> None:
    if args.json:
        meta = {"device": dev_name, "torch": torch.__version__, "lightning": L.__version__,
                "args": {k: v for k, v in vars(args).items() if k != "variant_list"}}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2,
                                              default=str))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", choices=["synthetic", "stage_a"], default="synthetic",
                   help="synthetic: random positive amplitudes + the configured probe; "
                        "stage_a: the simulated Stage A set (cached)")
    p.add_argument("--sizes", choices=sorted(SIZES), default="stage_a",
                   help="stage_a: N=64, width 32, 12 modes; small: N=32, width 8, 6 modes; "
                        "tiny: N=16, width 2, 4 modes (a ~5 ms CPU step)")
    p.add_argument("--variants", default=None,
                   help=f"depth:clip,... (default {DEFAULT_VARIANTS}, or --depth x --clip)")
    p.add_argument("--depth", type=int, nargs="+", default=None)
    p.add_argument("--clip", nargs="+", choices=sorted(CLIP_VALUES), default=None)
    p.add_argument("--impls", default=None,
                   help="comma list of bare,lightning,ours,graphs,compile,compile_graphs,"
                        "ours_bare_sinks,ours_probe,ours_tracked (default "
                        "bare,lightning,ours,graphs on CUDA, bare,lightning,ours on CPU)")
    p.add_argument("--steps", type=int, default=200, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps per round first")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--N", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--modes", type=int, default=None)
    p.add_argument("--corners", type=int, choices=[1, 2], default=2,
                   help="spectral layout: 2 ours (default), 1 the reference's (profile=reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tf32", type=lambda s: s.lower() in ("1", "true", "on", "yes"),
                   default=True)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU)")
    p.add_argument("--interleave", choices=["auto", "yes", "no"], default="auto",
                   help="round-robin the implementations (auto: on the CPU only)")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--pack", default=None,
                   help="comma list of pack sizes K (e.g. 1,2,4,8): the packing benchmark")
    p.add_argument("--pack-check", type=int, default=2,
                   help="with --pack: members of the exactness check (0: none)")
    p.add_argument("--pack-graphs", type=lambda s: s.lower() in ("1", "true", "on", "yes"),
                   default=None, help="packed members with CUDA graphs (default: on CUDA)")
    args = p.parse_args(argv)
    if args.pack is not None:
        args.pack = [int(k) for k in args.pack.split(",")]
    if args.pack_graphs is None:
        args.pack_graphs = args.device == "cuda"
    if args.variants is None:
        if args.depth is None and args.clip is None:
            args.variants = DEFAULT_VARIANTS
        else:
            args.variants = ",".join(f"{d}:{c}" for d in (args.depth or [4])
                                     for c in (args.clip or ["norm"]))
    args.variant_list = [(int(v.split(":")[0]), v.split(":")[1])
                         for v in args.variants.split(",")]
    if args.impls is None:
        args.impls = ("bare,lightning,ours,graphs" if args.device == "cuda"
                      else "bare,lightning,ours")
    args.impls = [i.strip() for i in args.impls.split(",")]
    bad = [i for i in args.impls if i not in BASELINES and i not in IMPL_FLAGS]
    if bad:
        p.error(f"unknown --impls {bad}")
    args.interleave = (args.device == "cpu") if args.interleave == "auto" else \
        args.interleave == "yes"
    return args


def main(argv=None) -> int:
    args = parse(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("PTYCHOSTAB_CACHE", str(Path(tempfile.gettempdir()) / "ptycho-bench"))
    if device.type == "cuda":  # what the job sets (and records) for trainer.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} thread(s)"
    print(f"device: {dev_name}; torch {torch.__version__}; lightning {L.__version__}; "
          f"python {platform.python_version()}; "
          f"data {args.data}; sizes {args.sizes}; batch {args.batch}; "
          f"{args.warmup}+{args.steps} steps/round x (1 + {args.repeats}) rounds; "
          f"tf32 {args.tf32 if device.type == 'cuda' else 'n/a'}; "
          f"interleaved {args.interleave}", flush=True)

    if args.pack:
        return pack_main(args, device, dev_name)
    results = []
    with tempfile.TemporaryDirectory(prefix="train-step-") as tmp:
        for variant in args.variant_list:
            t0 = time.perf_counter()
            res = run_variant(args, variant, device, Path(tmp))
            res["wall_s"] = time.perf_counter() - t0
            results.append(res)
            print(f"variant d{variant[0]} {variant[1]}: {res['params_real']:,} real params, "
                  f"{res['flops_per_step'] / 1e9:.2f} GFLOP/step counted, "
                  f"{res['wall_s']:.0f} s", flush=True)
            print(table([res], args), flush=True)  # partial results survive a time limit
            write_json(args, dev_name, results)
    text = table(results, args)
    print("\nStage A projection (862 steps/epoch + epoch end):")
    print("\n".join(projection(results)))
    costs = sink_costs(results)
    if costs:
        print("\nper-run sinks (issues 12, 15; against ours_bare_sinks, same run):")
        print("\n".join(costs))
    print("\ntargets on H100/H200: ours/bare >= 0.95; >= 200 steps/s at d4 batch 16 "
          "(epoch <= 4.5 s)")
    print(f"\n{text}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
