"""Generator diagnostics from the command line (the strategy's ``debug_fno_activations`` check).

    python -m ptychostab.cli.diagnose activations --arch hybrid --depth 4 --N 64 --out DIR
    python -m ptychostab.cli.diagnose gradients --arch stable_hybrid --checkpoint last.ckpt \\
        --input data.npz --out DIR

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
    p.add_argument("--arch", required=True, choices=generator_names())
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
    p.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.manual_seed(args.seed)
    if args.input is not None:
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
    x = x * args.input_scale

    model = build_generator(
        args.arch, in_channels=x.shape[1], hidden_channels=args.hidden_channels,
        n_modes=args.n_modes, fno_blocks=args.depth, N=x.shape[-1], corners=args.corners,
        max_hidden_channels=args.max_hidden_channels, max_levels=args.max_levels,
        levels=args.levels, gamma_init=args.gamma_init, layerscale_init=args.layerscale_init,
        fno_cnn_blocks=args.fno_cnn_blocks,
    )
    weights = "untrained"
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


if __name__ == "__main__":
    sys.exit(main())
