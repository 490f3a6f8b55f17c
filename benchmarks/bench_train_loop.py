"""Benchmark: our training loop against a bare PyTorch loop, same work, one process.

    .venv/bin/python benchmarks/bench_train_loop.py [--epochs 3] [--repeats 2] [--clip agc]

"Ours" is the job's loop exactly as ``run_job`` runs it: the LightningModule under the
Lightning Trainer, with the device-side monitors, the per-epoch validation, history.csv,
last.ckpt/best.ckpt and the CSV logger. "Bare" is a plain PyTorch loop over the same batches
(same seeded order), same generator and initial weights, same optimizer and clipping, and the
same per-epoch validation pass; it keeps no statistics and writes nothing.

Model: hybrid, depth 4, hidden 32, 12 modes at N=32 (3 levels), batch 16, on 1849 training
patterns (116 steps per epoch). Epoch 0 of each loop is warm-up; the timed span is epochs
1..E-1, from the start of epoch 1 to the end of the last epoch. The loops alternate
(bare, ours, bare, ours, ...) and the best repeat of each is reported, which damps the noise of
a shared machine. Target (issue 4): overhead = ours / bare - 1 <= 5 %.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
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
        "depth": 4, "data.N": 32, "data.size": 200, "data.n_lines": 80,
        "data.outer_offset_train": 8, "data.outer_offset_test": 40,
        "arch.hidden_channels": 32, "arch.n_modes": 12,
        "trainer.batch_size": 16, "trainer.max_epochs": args.epochs,
        "clip.algorithm": args.clip, "clip.value": clip_value,
    })


def run_ours(cfg, root: Path, init: dict) -> tuple[float, int]:
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
    end = time.perf_counter()
    steps = job.module.global_step_count - job.module.batches.batches_per_epoch
    return end - stamps[1], steps


def run_bare(cfg, module: PtychoModule, init: dict) -> tuple[float, int]:
    """The same work without Lightning, monitors or records."""
    gen = copy.deepcopy(module.generator)
    gen.load_state_dict(init)
    probe, data, val = module.probe, module.train_data, module.val_data
    s = module.settings
    opt = build_optimizer(gen.parameters(), s)
    clipper = GradientClipper.from_config(cfg.clip)
    loss_fn = module.loss_fn
    n, b = data.shape[0], s.batch_size
    start = None
    for epoch in range(s.max_epochs):
        if epoch == 1:
            start = time.perf_counter()
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
    steps = (s.max_epochs - 1) * math.ceil(n / b)
    return time.perf_counter() - start, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="per loop; epoch 0 is warm-up")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--clip", default="agc", choices=["none", "norm", "value", "agc"])
    p.add_argument("--threads", type=int, default=1)
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
        print(f"model: {info['class']} channels {info['channels']} blocks {info['blocks_per_level']}"
              f" params {info['params_real']:,} real; N={cfg.data.N}, batch "
              f"{cfg.trainer.batch_size}, {module.batches.n_samples} patterns, "
              f"{module.batches.batches_per_epoch} steps/epoch, clip {args.clip}, "
              f"{args.threads} thread(s), torch {torch.__version__}")
        bare, ours = [], []
        for r in range(args.repeats):
            t, steps = run_bare(cfg, module, init)
            bare.append(steps / t)
            t, steps = run_ours(cfg, Path(tmp) / f"ours{r}", init)
            ours.append(steps / t)
            print(f"repeat {r}: bare {bare[-1]:.2f} steps/s, ours {ours[-1]:.2f} steps/s "
                  f"({steps} timed steps each)")
    b, o = max(bare), max(ours)
    print(f"bare loop : {b:8.2f} steps/s  ({1e3 / b:.1f} ms/step)")
    print(f"our loop  : {o:8.2f} steps/s  ({1e3 / o:.1f} ms/step)")
    print(f"ratio ours/bare (speed): {o / b:.3f}   overhead: {100 * (b / o - 1):+.1f} %   "
          f"(target <= 5 %)")


if __name__ == "__main__":
    main()
