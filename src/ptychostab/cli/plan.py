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

Time per epoch, each figure labelled: measured epochs of the sweep's own runs, else a
calibration (a few real training steps of the arm timed on the device its jobs use, scaled to
an epoch; ``ptychostab.launch.calibrate``), else scaled from other arms, else the model.
For a local sweep this dry run times the arms that have no figure in the calibration cache
(``<paths.cache_dir>/calibration.json``, or ``$PTYCHOSTAB_CALIBRATION``), within a bound for
the whole study (``--calibrate-budget``, default 30 s; an arm once started gets at least two
timed steps); the sweep preflight never times anything, it reads the cache. For
``launcher=slurm`` nothing is timed here: the estimate uses figures calibrated on the
partition, which ``--calibrate`` run as a tiny job there records.

Options (before or among the overrides):
  --calibrate             time every arm again (also: as a SLURM job, for its partition)
  --no-calibrate          time nothing; use the cache or fall back (labelled)
  --calibrate-budget S    seconds for the whole study's calibration (default 30)
"""

from __future__ import annotations

import os
import sys

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from ptychostab import config as cfgmod
from ptychostab.launch import calibrate
from ptychostab.launch import plan as planmod
from ptychostab.launch.estimate import estimate_times

USAGE = ("usage: python -m ptychostab.cli.plan [--calibrate | --no-calibrate] "
         "[--calibrate-budget S] [key=value ...]   (the overrides of train.py -m)")


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


def split_options(args: list[str]) -> tuple[list[str], dict]:
    """(the overrides, the dry run's own options); a bad option raises ``ValueError``."""
    opts = {"calibrate": "missing", "budget_s": calibrate.DEFAULT_BUDGET_S}
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--calibrate":
            opts["calibrate"] = "all"
        elif a == "--no-calibrate":
            opts["calibrate"] = "none"
        elif a == "--calibrate-budget" or a.startswith("--calibrate-budget="):
            value = a.split("=", 1)[1] if "=" in a else next(it, "")
            try:
                opts["budget_s"] = float(value)
            except ValueError:
                raise ValueError(f"--calibrate-budget takes seconds, got {value!r}") from None
            if not opts["budget_s"] >= 0:
                raise ValueError(f"--calibrate-budget must be >= 0, got {value!r}")
        elif a.startswith("--"):
            raise ValueError(f"unknown option {a!r}")
        else:
            rest.append(a)
    return rest, opts


def calibrate_lines(plan: planmod.Plan, mode: str, budget_s: float) -> list[str]:
    """Time the plan's arms if this dry run should (see the module docstring), then
    re-estimate; the lines that say what was done."""
    if mode == "none" or not plan.arms:
        return []
    if plan.remote and mode != "all":
        return []  # time_notes (in the plan's text) says how to calibrate the partition
    if plan.remote and not os.environ.get("SLURM_JOB_PARTITION"):
        return ["calibration: not done: --calibrate with launcher=slurm times the device it "
                "runs on, and this is not a SLURM job, so it would not be the partition's; "
                "run it inside one (srun/sbatch on the partition)"]
    report = calibrate.calibrate_plan(plan, budget_s=budget_s, force=mode == "all",
                                      say=lambda text: print(text, file=sys.stderr, flush=True))
    estimate_times(plan)
    return report.lines()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        args, opts = split_options(args)
    except ValueError as err:
        print(f"plan: {err}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        plan = build_plan(args)
    except planmod.PlanError as err:
        print(f"plan: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # composition errors (typo, unknown option) from Hydra/OmegaConf
        cause = f"\n{err.__cause__}" if err.__cause__ is not None else ""
        print(f"plan: cannot compose the sweep: {err}{cause}", file=sys.stderr)
        return 2
    notes = calibrate_lines(plan, opts["calibrate"], opts["budget_s"])
    path = planmod.write_csv(plan)
    print(planmod.format_plan(plan))
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\nwrote {path}")
    refused = plan.refusals()
    if refused:
        print("\nREFUSED (the sweep would not be launched):\n  - " + "\n  - ".join(refused),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
