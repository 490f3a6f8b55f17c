"""Generator diagnostics from the command line (the strategy's ``debug_fno_activations`` check).

    python -m ptychostab.cli.diagnose activations --arch hybrid --depth 4 --N 64 --out DIR
    python -m ptychostab.cli.diagnose gradients --arch stable_hybrid --checkpoint last.ckpt \\
        --input data.npz --out DIR
    python -m ptychostab.cli.diagnose activations --run outputs/<sweep>/<arm>/seed=<k> [--best]
    python -m ptychostab.cli.diagnose activations --run outputs/<sweep>/<arm>/seed=<k> --epochs

``--run`` reads the architecture and the data config from the run's ``manifest.json``, the
weights from its ``last.ckpt`` (``--best``: ``best.ckpt``) and the input from the run's own probe
batch (:func:`~ptychostab.diagnostics.drift.probe_indices` of its validation patterns); ``--out``
defaults to ``<run>/diagnostics``. ``--epochs`` plots the trajectory the run recorded in its
``activations.csv`` instead (no model is built).

Writes ``<out>/<command>.json`` and ``<out>/<command>.png``. The generator is untrained unless
``--checkpoint`` is given (a state_dict or a Lightning checkpoint; a key prefix such as
``model.`` is found and stripped). Without ``--input`` the batch is
:func:`~ptychostab.diagnostics.synthetic_diffraction` (positive, diffraction-like).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from ..diagnostics import (
    activation_report,
    gradient_report,
    load_diffraction,
    plot_activation_report,
    plot_gradient_report,
    synthetic_diffraction,
    write_json,
)
from ..models import build_generator, generator_names


def load_generator_weights(model: nn.Module, path: str | Path) -> str:
    """Load a state_dict or Lightning checkpoint into ``model``; returns the stripped prefix."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning checkpoints may pickle config objects; these are the user's own files.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    want = model.state_dict().keys()
    anchor = next(iter(want))
    prefixes = {k[: len(k) - len(anchor)] for k in state if k.endswith(anchor)}
    for prefix in sorted(prefixes, key=len):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub.keys() == want:  # exact: a stable_hybrid checkpoint must not load into hybrid
            model.load_state_dict(sub)
            return prefix
    raise ValueError(f"{path}: no key prefix maps the checkpoint exactly onto this generator "
                     f"(wanted e.g. {anchor!r}); check --arch and the size flags")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ptychostab.cli.diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("activations", "gradients"))
    p.add_argument("--run", type=Path, default=None,
                   help="a run folder: architecture from its manifest, weights from last.ckpt")
    p.add_argument("--best", action="store_true", help="with --run: best.ckpt, not last.ckpt")
    p.add_argument("--epochs", action="store_true",
                   help="with --run: plot the recorded activations.csv against epoch")
    p.add_argument("--arch", default=None, choices=generator_names(),
                   help="generator (required unless --run)")
    p.add_argument("--depth", type=int, default=4, help="fno_blocks (default 4)")
    p.add_argument("--N", type=int, default=None,
                   help="patch side (default: from --input, else 64)")
    p.add_argument("--in-channels", type=int, default=None,
                   help="C = gridsize^2 (default: from --input, else 1)")
    p.add_argument("--hidden-channels", type=int, default=32)
    p.add_argument("--n-modes", type=int, default=12)
    p.add_argument("--corners", type=int, default=2, choices=(1, 2))
    p.add_argument("--max-hidden-channels", type=int, default=None)
    p.add_argument("--max-levels", type=int, default=None)
    p.add_argument("--levels", type=int, default=None)
    p.add_argument("--gamma-init", type=float, default=0.0)
    p.add_argument("--layerscale-init", type=float, default=None)
    p.add_argument("--fno-cnn-blocks", type=int, default=2)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--input", type=Path, default=None,
                   help="NPZ with train_amp or diffraction, (n,N,N) or (n,C,N,N)")
    p.add_argument("--input-key", default=None, help="NPZ array to read instead")
    p.add_argument("--input-scale", type=float, default=1.0,
                   help="multiply the inputs (e.g. the training intensity scale)")
    p.add_argument("--samples", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--seed", type=int, default=0, help="weights init and synthetic input")
    p.add_argument("--out", type=Path, default=None, help="(required unless --run)")
    return p


def _run_model_and_input(run: Path, best: bool) -> tuple[nn.Module, torch.Tensor, str, str]:
    """The run's generator with its checkpoint's weights, and the run's probe batch."""
    from omegaconf import OmegaConf

    from ..diagnostics.drift import probe_indices
    from ..runs import records
    from ..runs.checkpoint import load_checkpoint
    from ..runs.job import build_model, load_data

    manifest = records.read_json(run / records.MANIFEST)
    if not manifest.ok or "config" not in (manifest.data or {}):
        raise SystemExit(f"--run {run}: no readable manifest.json with a config "
                         f"({manifest.problem or 'no config key'})")
    cfg = OmegaConf.create(manifest.data["config"])
    model = build_model(cfg)
    name = records.BEST_CKPT if best else records.LAST_CKPT
    path = run / name
    if not path.exists():
        raise SystemExit(f"--run {run}: no {name} (the run saved no checkpoint yet)")
    if best:
        state = torch.load(path, map_location="cpu", weights_only=True)["generator"]
    else:
        state = load_checkpoint(path)["training"]["generator"]
    model.load_state_dict(state)
    data = load_data(cfg)
    x = torch.as_tensor(data.test_amp[probe_indices(len(data.test_amp))])
    return model, x, str(path), f"probe batch of {run}"


def _plot_epochs(run: Path, out: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..diagnostics.drift import ACTIVATIONS, read_activations

    rows = read_activations(run / ACTIVATIONS)
    if not rows:
        raise SystemExit(f"--run {run}: no {ACTIVATIONS} (diagnostics.every_n_epochs=0, or "
                         "the run started before the probe existed)")
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for block in sorted({r["block"] for r in rows}):
        rs = [r for r in rows if r["block"] == block]
        label = f"{block}: {rs[0]['name']} (L{rs[0]['level']})"
        e = [r["epoch"] for r in rs]
        axes[0].plot(e, [r["out_mean"] for r in rs], marker=".", label=label)
        axes[1].plot(e, [r["update_mean"] for r in rs], marker=".")
        axes[2].plot(e, [r["gelu_saturated"] for r in rs], marker=".")
    for ax, title in zip(axes, ("output signed mean", "update signed mean",
                                "GELU inputs < -3 (fraction)"), strict=False):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch (-1 = init)")
        ax.axhline(0, color="0.6", lw=0.7)
    axes[0].legend(fontsize=6)
    fig.suptitle(str(run), fontsize=9)
    path = out / "activations_epochs.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    last = max(r["epoch"] for r in rows)
    for r in rows:
        if r["epoch"] in (-1, last):
            print(f"epoch {r['epoch']:3d} block {r['block']:2d} {r['name']:14s} "
                  f"mean={r['out_mean']:+.4g} update_mean={r['update_mean']:+.3g} "
                  f"saturated={r['gelu_saturated']:.3g}")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.run is None:
        for flag in ("arch", "out"):
            if getattr(args, flag) is None:
                parser.error(f"--{flag} is required unless --run is given")
        if args.best or args.epochs:
            parser.error("--best and --epochs need --run")
    else:
        args.out = args.out or args.run / "diagnostics"
        if args.epochs:
            return _plot_epochs(args.run, args.out)
    torch.manual_seed(args.seed)
    if args.run is not None:
        model, x, weights, source = _run_model_and_input(args.run, args.best)
    elif args.input is not None:
        x = load_diffraction(args.input, key=args.input_key, max_samples=args.samples)
        source = str(args.input)
        for flag, have, want in (("--N", x.shape[-1], args.N),
                                 ("--in-channels", x.shape[1], args.in_channels)):
            if want is not None and want != have:
                raise SystemExit(f"{flag} {want} does not match the input's {have}")
    else:
        N, C = args.N or 64, args.in_channels or 1
        x = synthetic_diffraction(args.samples, C, N, seed=args.seed)
        source = f"synthetic_diffraction(seed={args.seed})"
    if args.run is None:
        x = x * args.input_scale
        model, weights = _model_from_flags(args, x), "untrained"
        if args.checkpoint is not None:
            load_generator_weights(model, args.checkpoint)
            weights = str(args.checkpoint)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "activations":
        report = activation_report(model, x, input_source=source)
        plot = plot_activation_report
        line = "{index:3d} {kind:18s} c={channels:<4d} {size:>3d}px mean={mean:+.4g} " \
               "std={std:.4g} update_mean={update_mean:+.3g}"
    else:
        report = gradient_report(model, x)
        plot = plot_gradient_report
        line = "{index:3d} {kind:18s} spectral={spectral_grad_mean:.3g} " \
               "local={local_grad_mean:.3g} ratio={spectral_local_ratio:.3g}"
    report["summary"].update(weights=weights, input_source=source)
    json_path = write_json(report, args.out / f"{args.command}.json")
    png_path = plot(report, args.out / f"{args.command}.png")
    for block in report["blocks"]:
        print(line.format(**block))
    print(f"wrote {json_path} and {png_path}")
    return 0


def _model_from_flags(args, x: torch.Tensor) -> nn.Module:
    return build_generator(
        args.arch, in_channels=x.shape[1], hidden_channels=args.hidden_channels,
        n_modes=args.n_modes, fno_blocks=args.depth, N=x.shape[-1], corners=args.corners,
        max_hidden_channels=args.max_hidden_channels, max_levels=args.max_levels,
        levels=args.levels, gamma_init=args.gamma_init, layerscale_init=args.layerscale_init,
        fno_cnn_blocks=args.fno_cnn_blocks,
    )


if __name__ == "__main__":
    sys.exit(main())
