"""Forward+backward speed and size of the generators (CPU by default).

    .venv/bin/python benchmarks/bench_models.py                 # hybrid depth 4/6/8, fno 4
    .venv/bin/python benchmarks/bench_models.py --corners 1 --threads 2 --steps 10

Prints one row per generator: parameters (torch numel and real scalars) and ms per training
step (forward, loss = mean |output|, backward; median and min over ``--steps`` after
``--warmup``), then a spectral-layer micro-benchmark against the naive full-spectrum variant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ptychostab.models import SpectralConv2d, build_generator, describe
from ptychostab.models.layers import fit_modes

CASES = [("hybrid", 4), ("hybrid", 6), ("hybrid", 8), ("fno", 4), ("fno", 8)]


def time_steps(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def bench_generators(args) -> None:
    print(f"generators: N={args.N} batch={args.batch} corners={args.corners} "
          f"device={args.device} threads={torch.get_num_threads()}")
    print(f"{'arch':8s} {'depth':>5s} {'blocks/level':>14s} {'numel':>12s} {'real':>12s} "
          f"{'mem est':>9s} {'ms/step':>9s} {'min':>8s}")
    for arch, depth in CASES:
        torch.manual_seed(0)
        model = build_generator(arch, fno_blocks=depth, N=args.N, corners=args.corners)
        model.to(args.device)
        d = describe(model, batch_size=args.batch)
        x = torch.rand(args.batch, 1, args.N, args.N, device=args.device)

        def step(model=model, x=x):
            model.zero_grad(set_to_none=True)
            model(x).abs().mean().backward()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        ms = time_steps(step, args.steps, args.warmup)
        print(f"{arch:8s} {depth:5d} {str(d['blocks_per_level']):>14s} {d['params_numel']:12,d} "
              f"{d['params_real']:12,d} {d['memory_bytes_estimate'] / 2**30:8.2f}G "
              f"{statistics.median(ms):9.1f} {min(ms):8.1f}")


def _full_spectrum_reference(layer: SpectralConv2d, x: torch.Tensor) -> torch.Tensor:
    """The naive route: a full (B, out, H, W//2+1) zero spectrum per call, filled by corner."""
    B, _, H, W = x.shape
    top, bottom, cols = layer.kept_modes(H, W)
    X = torch.fft.rfft2(x)
    Y = torch.zeros(B, layer.out_channels, H, W // 2 + 1, dtype=X.dtype)
    w = layer.weight
    Y[:, :, :top, :cols] = torch.einsum("bixy,ioxy->boxy", X[:, :, :top, :cols],
                                        w[:, :, 0, :top, :cols])
    Y[:, :, H - bottom:, :cols] = torch.einsum("bixy,ioxy->boxy", X[:, :, H - bottom:, :cols],
                                               w[:, :, 1, :bottom, :cols])
    return torch.fft.irfft2(Y, s=(H, W))


def bench_spectral(args) -> None:
    print(f"\nspectral layer (corners=2, modes 12, batch {args.batch}), forward+backward ms, "
          f"min over {args.steps} interleaved rounds")
    print(f"{'channels':>8s} {'size':>5s} {'ours':>8s} {'full-zeros':>11s}")
    for c, size in ((32, 64), (64, 32), (128, 16), (256, 8)):
        layer = SpectralConv2d(c, c, fit_modes(12, size), corners=2)  # as the generators size it
        x = torch.randn(args.batch, c, size, size, requires_grad=True)
        torch.testing.assert_close(layer(x), _full_spectrum_reference(layer, x))
        ours, naive = [], []
        for _ in range(args.steps):  # interleaved: a load spike on a shared machine hits both
            ours += time_steps(lambda f=layer, x=x: f(x).sum().backward(), 3, args.warmup)
            naive += time_steps(
                lambda f=layer, x=x: _full_spectrum_reference(f, x).sum().backward(),
                3, args.warmup)
        print(f"{c:8d} {size:5d} {min(ours):8.2f} {min(naive):11.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--corners", type=int, default=2, choices=(1, 2))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-spectral", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_generators(args)
    if not args.skip_spectral:
        bench_spectral(args)


if __name__ == "__main__":
    main()
