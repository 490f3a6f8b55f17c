"""Benchmark: our training loop against a bare PyTorch loop, same work, one process.

    .venv/bin/python benchmarks/bench_train_loop.py [--epochs 3] [--repeats 3] [--clip agc]
                                                    [--hidden 16] [--size 120] [--threads 1]

"Ours" is the job's loop exactly as ``run_job`` runs it: the LightningModule under the
Lightning Trainer, with the device-side monitors, the per-epoch validation, history.csv,
last.ckpt/best.ckpt and the CSV logger. "Bare" is a plain PyTorch loop over the same batches
(same seeded order), same generator and initial weights, same optimizer and clipping, and the
same per-epoch validation pass; it keeps no statistics and writes nothing.

Model: hybrid, depth 4, 12 modes at N=32 (3 levels), width ``--hidden`` (16: 1.4 M real
parameters; 32: 5.6 M), batch 16, on the training patterns of a ``--size`` px object
(120: 529 patterns, 34 steps per epoch).

Each epoch is timed from its start to the next epoch's start (so our epoch-end work --
validation, history, checkpoints -- is inside, as the bare loop's validation is); epoch 0 of
every loop is warm-up. The loops alternate (bare-ours, ours-bare, ...) and the best and the
median epoch of each are reported: on a shared machine the best epochs are the ones least
disturbed by other load. Target (issue 4): overhead = bare speed / our speed - 1 <= 5 %.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ptychostab.physics.forward import predict_amplitude
from ptychostab.runs.job import _Job
from ptychostab.runs.signals import PreemptionGuard
from ptychostab.training.batches import epoch_permutation
from ptychostab.training.clipping import GradientClipper
from ptychostab.training.module import PtychoModule
from ptychostab.training.optim import build_optimizer
from ptychostab.training.testing import tiny_config


def config(args):
    clip_value = {"none": None, "norm": 1.0, "value": 0.1, "agc": 0.01}[args.clip]
    return tiny_config(**{
        "depth": 4, "data.N": 32, "data.size": args.size, "data.n_lines": 60,
        "data.outer_offset_train": 8, "data.outer_offset_test": 40,
        "arch.hidden_channels": args.hidden, "arch.n_modes": 12,
        "trainer.batch_size": 16, "trainer.max_epochs": args.epochs,
        "clip.algorithm": args.clip, "clip.value": clip_value,
    })


def run_ours(cfg, root: Path, init: dict) -> list[float]:
    """Seconds of each epoch after the first (epoch start to next epoch start / fit end)."""
    job = _Job(cfg, root, {}, "bench", [], PreemptionGuard())
    root.mkdir(parents=True, exist_ok=True)
    job.setup()
    job.module.generator.load_state_dict(init)
    stamps = []
    real = PtychoModule.on_train_epoch_start

    def stamp(self):
        stamps.append(time.perf_counter())
        real(self)

    job.module.on_train_epoch_start = stamp.__get__(job.module)
    job.train()
    stamps.append(time.perf_counter())
    return [t1 - t0 for t0, t1 in zip(stamps[1:-1], stamps[2:], strict=True)]


def run_bare(cfg, module: PtychoModule, init: dict) -> list[float]:
    """The same work without Lightning, monitors or records; seconds per epoch after the
    first."""
    gen = copy.deepcopy(module.generator)
    gen.load_state_dict(init)
    probe, data, val = module.probe, module.train_data, module.val_data
    s = module.settings
    opt = build_optimizer(gen.parameters(), s)
    clipper = GradientClipper.from_config(cfg.clip)
    loss_fn = module.loss_fn
    n, b = data.shape[0], s.batch_size
    stamps = []
    for epoch in range(s.max_epochs):
        stamps.append(time.perf_counter())
        perm = epoch_permutation(n, module.batches.seed, epoch)
        gen.train()
        for i in range(math.ceil(n / b)):
            x = data[perm[i * b:(i + 1) * b]]
            loss = loss_fn(predict_amplitude(gen(x), probe), x)
            loss.backward()
            clipper(gen)
            opt.step()
            opt.zero_grad(set_to_none=True)
        gen.eval()
        with torch.no_grad():
            total = sum(loss_fn(predict_amplitude(gen(v), probe), v) * len(v)
                        for v in val.split(s.eval_batch_size))
        float(total)  # the epoch's one read
    stamps.append(time.perf_counter())
    return [t1 - t0 for t0, t1 in zip(stamps[1:-1], stamps[2:], strict=True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="per loop; epoch 0 is warm-up")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clip", default="agc", choices=["none", "norm", "value", "agc"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=16, help="width of the finest level")
    p.add_argument("--size", type=int, default=120, help="object side (sets the patterns)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("PTYCHOSTAB_CACHE", str(Path(tempfile.gettempdir()) / "ptycho-bench"))
    cfg = config(args)

    with tempfile.TemporaryDirectory() as tmp:
        probe_job = _Job(cfg, Path(tmp) / "probe", {}, "bench", [], PreemptionGuard())
        (Path(tmp) / "probe").mkdir()
        probe_job.setup()
        module = probe_job.module
        init = copy.deepcopy(module.generator.state_dict())
        info = probe_job.effective["generator"]
        print(f"model: {info['class']} channels {info['channels']} blocks "
              f"{info['blocks_per_level']} params {info['params_real']:,} real; "
              f"N={cfg.data.N}, batch {cfg.trainer.batch_size}, "
              f"{module.batches.n_samples} patterns, "
              f"{module.batches.batches_per_epoch} steps/epoch, clip {args.clip}, "
              f"{args.threads} thread(s), torch {torch.__version__}")
        steps = module.batches.batches_per_epoch
        bare, ours = [], []
        for r in range(args.repeats):
            if r % 2:  # alternate the order: neither loop always runs first
                ours += run_ours(cfg, Path(tmp) / f"ours{r}", init)
                bare += run_bare(cfg, module, init)
            else:
                bare += run_bare(cfg, module, init)
                ours += run_ours(cfg, Path(tmp) / f"ours{r}", init)
            print(f"repeat {r}: epoch seconds bare {[round(t, 2) for t in bare[-2:]]}, "
                  f"ours {[round(t, 2) for t in ours[-2:]]}")
    for label, pick in (("best epoch", min), ("median epoch", statistics.median)):
        b, o = steps / pick(bare), steps / pick(ours)
        print(f"{label:>12}: bare {b:7.2f} steps/s ({1e3 / b:6.1f} ms/step)   "
              f"ours {o:7.2f} steps/s ({1e3 / o:6.1f} ms/step)   "
              f"ours/bare speed {o / b:.3f}, overhead {100 * (b / o - 1):+.1f} %")
    print("target: overhead <= 5 % (best-epoch figures are the least disturbed by other load)")


if __name__ == "__main__":
    main()
