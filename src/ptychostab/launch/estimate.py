"""Per arm, before anything runs: parameter count, training memory and run time.

:func:`describe_arm` asks ``ptychostab.models.describe`` for the parameter count and the
training-memory estimate (from the config, no allocation) and refuses an arm that cannot be
built or exceeds ``plan.max_memory_gb``. :func:`estimate_times` sets each arm's epoch time,
first that applies:

1. measured: median epoch duration (differences of ``wall_s`` in ``history.csv``) of the arm's
   runs already in the sweep folder;
2. scaled: another arm of the sweep was measured; scale its epoch time by the ratio of the
   training-memory estimates (the networks here are bandwidth-bound convolutions/FFTs);
3. model: ``steps * (plan.step_overhead_s + memory_bytes / (plan.gb_per_s * 1e9))`` with
   ``steps = ceil(n_train / batch_size) + ceil(n_test / eval_batch_size) / 3`` (an evaluation
   step costs about a third of a training step). A crude guess; 1 and 2 replace it.

A run's minutes = remaining epochs (``max_epochs`` - epochs in its history) x epoch time.
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


def estimate_times(plan: Plan) -> None:
    measured: dict[str, float] = {}
    for arm_id in plan.arms:
        durations = [d for j in plan.jobs if j.arm_id == arm_id
                     for d in history_epochs(j.run_dir)]
        if durations:
            measured[arm_id] = statistics.median(durations)
    refs = [(plan.arms[a].memory_gb, s) for a, s in measured.items() if plan.arms[a].memory_gb]
    for arm in plan.arms.values():
        if arm.arm_id in measured:
            arm.epoch_s, arm.epoch_s_source = measured[arm.arm_id], "measured"
        elif refs and arm.memory_gb:
            arm.epoch_s = statistics.median(s * arm.memory_gb / m for m, s in refs)
            arm.epoch_s_source = "scaled"
        else:
            arm.epoch_s = model_epoch_s(arm, plan.settings)
            arm.epoch_s_source = "model" if arm.epoch_s is not None else None
    for job in plan.jobs:
        arm = plan.arms[job.arm_id]
        if job.status != TODO:
            job.est_minutes = (job.wall_s or 0.0) / 60
        elif arm.epoch_s is not None:
            left = max(int(arm.cfg["trainer"]["max_epochs"]) - job.epochs_done, 0)
            job.est_minutes = left * arm.epoch_s / 60


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
