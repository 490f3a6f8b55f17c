"""Per arm, before anything runs: parameter count, training memory and run time.

:func:`describe_arm` asks ``ptychostab.models.describe`` for the parameter count and the
training-memory estimate (from the config, no allocation) and refuses an arm that cannot be
built or exceeds ``plan.max_memory_gb``. :func:`estimate_times` sets each arm's epoch time,
first that applies, and labels it (``epoch_s_source``; ``epoch_s_detail`` says more):

1. measured: median epoch duration (differences of ``wall_s`` in ``history.csv``) of the arm's
   runs already in the sweep folder ("measured, K epochs of this sweep's runs");
2. calibrated: a few real training steps of the arm timed on the device its jobs use, scaled
   to an epoch (:mod:`.calibrate`; read from the calibration cache: only the dry run times
   them, the sweep preflight reads the cache). A SLURM sweep (``launcher=slurm``) uses only
   figures calibrated inside a SLURM job on its ``cluster.partition``, never this machine's;
3. scaled: another arm of the sweep was measured (else: calibrated); scale its epoch time by
   the ratio of the training-memory estimates (the networks here are bandwidth-bound
   convolutions/FFTs);
4. model: ``steps * (plan.step_overhead_s + memory_bytes / (plan.gb_per_s * 1e9))`` with
   ``steps = ceil(n_train / batch_size) + ceil(n_test / eval_batch_size) / 3`` (an evaluation
   step costs about a third of a training step). A crude guess, the same for every device;
   1-3 replace it.

A run's minutes = remaining epochs (``max_epochs`` - epochs in its history) x epoch time.
:func:`time_notes` says, for the dry-run text, which arms' figures are not calibrated for the
device the jobs run on, and how to calibrate them.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ptychostab.launch.grid import TODO, one_line
from ptychostab.runs import records

if TYPE_CHECKING:
    from ptychostab.launch.plan import Plan, PlannedArm

def history_epochs(run_dir: Path) -> list[float]:
    """Epoch durations of one run (seconds), from history.csv's cumulative wall_s."""
    rows = records.read_history(run_dir / records.HISTORY).data or []
    walls = [r.get("wall_s", math.nan) for r in rows]
    walls = [w for w in walls if isinstance(w, float) and math.isfinite(w)]
    if not walls:
        return []
    if len(walls) == 1:
        return [walls[0]]
    return [b - a for a, b in zip(walls, walls[1:], strict=False) if b > a]


def describe_config(cfg: Mapping[str, Any]) -> dict:
    """``ptychostab.models.describe`` for a plain resolved config (no weights allocated)."""
    from ptychostab.models import describe  # lazy: the dry run must work before models exist

    arch = dict(cfg["arch"])
    data = cfg["data"]
    return describe({**arch, "N": data["N"], "in_channels": int(data.get("gridsize", 1)) ** 2},
                    batch_size=int(cfg["trainer"]["batch_size"]))


def describe_arm(arm: PlannedArm, settings: Mapping[str, Any]) -> None:
    try:
        info = describe_config(arm.cfg)
    except ImportError as err:
        arm.describe_note = f"no model description ({err})"
        return
    except Exception as err:  # the models package refuses this network
        arm.refused = f"cannot be built: {one_line(err)}"
        return
    arm.params_real = _int_or_none(info.get("params_real"))
    arm.params_numel = _int_or_none(info.get("params_numel"))
    mem = info.get("memory_bytes_estimate")
    arm.memory_gb = float(mem) / 1e9 if isinstance(mem, (int, float)) else None
    limit = settings.get("max_memory_gb")
    if arm.memory_gb is not None and limit is not None and arm.memory_gb > float(limit):
        arm.refused = (f"training-memory estimate {arm.memory_gb:.1f} GB exceeds "
                       f"plan.max_memory_gb={limit:g} (lower trainer.batch_size, "
                       f"arch.hidden_channels or arch.max_hidden_channels, or raise "
                       f"plan.max_memory_gb)")


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def model_epoch_s(arm: PlannedArm, settings: Mapping[str, Any]) -> float | None:
    if arm.memory_gb is None:
        return None
    try:
        from ptychostab.data.spec import DataConfig

        spec = DataConfig.from_any(arm.cfg["data"])
        n_train, n_test = spec.n_train, spec.n_test
    except Exception:
        return None
    tr = arm.cfg["trainer"]
    steps = math.ceil(n_train / tr["batch_size"]) + math.ceil(n_test / tr["eval_batch_size"]) / 3
    step_s = float(settings.get("step_overhead_s", 0.01)) + arm.memory_gb / float(
        settings.get("gb_per_s", 100.0))
    return steps * step_s


def measured_arms(plan: Plan) -> dict[str, tuple[float, int]]:
    """``{arm_id: (median epoch seconds, epochs)}`` of the arms with measured epochs."""
    out: dict[str, tuple[float, int]] = {}
    for arm_id in plan.arms:
        durations = [d for j in plan.jobs if j.arm_id == arm_id
                     for d in history_epochs(j.run_dir)]
        if durations:
            out[arm_id] = (statistics.median(durations), len(durations))
    return out


#: The labels of an epoch time, in order of precedence.
SOURCES = ("measured", "calibrated", "scaled", "model")


def estimate_times(plan: Plan) -> None:
    """Set every arm's epoch time (first of :data:`SOURCES` that applies) and every job's
    minutes; reads the calibration cache, never times anything."""
    from ptychostab.launch import calibrate

    measured = measured_arms(plan)
    cache: dict = {}
    if plan.arms:
        try:
            cache = calibrate.read_cache(calibrate.cache_path(next(iter(plan.arms.values())).cfg))
        except (KeyError, TypeError):
            cache = {}
    calibrated: dict[str, dict] = {}
    for arm in plan.arms.values():
        if arm.arm_id not in measured:
            entry = calibrate.lookup(cache, arm.cfg, remote=plan.remote)
            if entry is not None:
                calibrated[arm.arm_id] = entry
    refs, ref_kind = [(plan.arms[a].memory_gb, s) for a, (s, _) in measured.items()
                      if plan.arms[a].memory_gb], "measured"
    if not refs:
        refs, ref_kind = [(plan.arms[a].memory_gb, e["epoch_s"]) for a, e in calibrated.items()
                          if plan.arms[a].memory_gb], "calibrated"
    for arm in plan.arms.values():
        if arm.arm_id in measured:
            arm.epoch_s, n = measured[arm.arm_id]
            arm.epoch_s_source = "measured"
            arm.epoch_s_detail = f"measured, {n} epoch(s) of this sweep's runs"
        elif arm.arm_id in calibrated:
            entry = calibrated[arm.arm_id]
            arm.epoch_s, arm.epoch_s_source = float(entry["epoch_s"]), "calibrated"
            arm.epoch_s_detail = calibrate.entry_label(entry)
        elif refs and arm.memory_gb:
            arm.epoch_s = statistics.median(s * arm.memory_gb / m for m, s in refs)
            arm.epoch_s_source = "scaled"
            arm.epoch_s_detail = f"scaled from {ref_kind} arms by training memory"
        else:
            arm.epoch_s = model_epoch_s(arm, plan.settings)
            arm.epoch_s_source = "model" if arm.epoch_s is not None else None
            arm.epoch_s_detail = ("model: fixed step overhead + memory / bandwidth, not this "
                                  "device's" if arm.epoch_s is not None else None)
    for job in plan.jobs:
        arm = plan.arms[job.arm_id]
        if job.status != TODO:
            job.est_minutes = (job.wall_s or 0.0) / 60
        elif arm.epoch_s is not None:
            left = max(int(arm.cfg["trainer"]["max_epochs"]) - job.epochs_done, 0)
            job.est_minutes = left * arm.epoch_s / 60


def time_notes(plan: Plan) -> list[str]:
    """Lines for the dry-run text: which arms with runs to do have no measured or calibrated
    figure for the device their jobs use, and how to get one."""
    from ptychostab.launch import calibrate

    todo = {j.arm_id for j in plan.jobs if j.status == TODO}
    loose = [a for a in plan.arms.values() if a.arm_id in todo and not a.refused
             and a.epoch_s_source not in ("measured", "calibrated")]
    if not loose:
        return []
    cfg = loose[0].cfg
    try:
        path = calibrate.cache_path(cfg)
    except (KeyError, TypeError):
        return []
    if plan.remote:
        partition = (cfg.get("cluster") or {}).get("partition")
        where = (f"SLURM partition {partition!r}" if partition else
                 "the SLURM partition (cluster.partition is not set: set it, or no "
                 "calibration can be matched to this sweep)")
        return [f"time: not calibrated for {where} (launcher=slurm: the jobs run there; "
                f"nothing timed on this machine stands for it) for {len(loose)} arm(s). "
                f"Run this dry run with --calibrate as a tiny job there, e.g. `srun -p "
                f"{partition or '<partition>'} --gres=gpu:1 -t 15 python -m "
                f"ptychostab.cli.plan --calibrate <these overrides>`: it fills {path}"]
    return [f"time: {len(loose)} arm(s) with no calibration on this machine's device "
            f"(their figure is scaled or model): the dry run `python -m ptychostab.cli.plan "
            f"<these overrides>` times them, within --calibrate-budget S (default "
            f"{calibrate.DEFAULT_BUDGET_S:g} s for the study); cache {path}"]


def device_problem(cfg: Mapping[str, Any]) -> str | None:
    """Why the requested accelerator does not exist on this machine (None: it does)."""
    accel = str(cfg["trainer"]["accelerator"])
    if accel != "cuda":
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return None
    except ImportError:
        pass
    return ("trainer.accelerator=cuda: no CUDA device on this machine (torch.cuda.is_available() "
            "is False); run it where there is a GPU, or use trainer.accelerator=auto or cpu")


def dataset_device_gb(cfg: Mapping[str, Any]) -> float | None:
    """Device bytes of one run's dataset (GB): the train and test amplitudes (float32) where
    they fit ``trainer.max_data_on_device_gb`` (as ``training.batches.place`` decides), plus
    the probe. A pack holds them once."""
    try:
        from ptychostab.data.spec import DataConfig

        spec = DataConfig.from_any(cfg["data"])
        budget = float(cfg["trainer"]["max_data_on_device_gb"]) * 1e9
    except Exception:
        return None
    per = spec.channels * spec.N * spec.N * 4
    train, val = spec.n_train * per, spec.n_test * per
    used = train if train <= budget else 0
    used += val if val <= budget - used else 0
    return (used + spec.N * spec.N * 8) / 1e9
