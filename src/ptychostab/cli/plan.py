"""Dry run of a sweep: ``python -m ptychostab.cli.plan [key=value ...]`` (``make plan EXP=...``).

Takes the same overrides as ``python train.py -m`` (e.g. ``+experiment=stage_a``, or
``arch=hybrid,stable_hybrid 'seed=range(10)'``), composes and validates every job without
launching anything, prints the arms x seeds with done / failed / to-do, each arm's parameter
count, training-memory estimate and run-time estimate, and writes ``plan.csv`` in the sweep
folder. With ``pack=K`` (K > 1) it also lists the packs the launch would form (the unfinished
seeds of each arm, up to K per job) with each pack's memory estimate (K x the training-memory
estimate + the dataset once); packs.json is the preflight's, not written here. Exit status 0:
the sweep can be launched; 1: some arm or pack is refused (cannot be built, or exceeds
``plan.max_memory_gb``; plan.csv is still written); 2: some job does not compose or validate
(nothing written).
"""

from __future__ import annotations

import sys

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from ptychostab import config as cfgmod
from ptychostab.launch import plan as planmod

USAGE = "usage: python -m ptychostab.cli.plan [key=value ...]   (the overrides of train.py -m)"


def build_plan(overrides: list[str], *, describe: bool = True) -> planmod.Plan:
    """Compose the sweep as ``python train.py -m <overrides>`` would, then plan every job."""
    cfgmod.check_overrides(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(cfgmod.CONF_DIR), version_base="1.3",
                               job_name=cfgmod.CONFIG_NAME):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(cfgmod.CONFIG_NAME, overrides=list(overrides),
                                           run_mode=RunMode.MULTIRUN)
        return planmod.build(master, loader, describe=describe)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        plan = build_plan(args)
    except planmod.PlanError as err:
        print(f"plan: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # composition errors (typo, unknown option) from Hydra/OmegaConf
        cause = f"\n{err.__cause__}" if err.__cause__ is not None else ""
        print(f"plan: cannot compose the sweep: {err}{cause}", file=sys.stderr)
        return 2
    path = planmod.write_csv(plan)
    print(planmod.format_plan(plan))
    print(f"\nwrote {path}")
    refused = plan.refusals()
    if refused:
        print("\nREFUSED (the sweep would not be launched):\n  - " + "\n  - ".join(refused),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
