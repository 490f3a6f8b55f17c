"""Checks a type cannot express: values, combinations, launcher settings and run folders.

:func:`validate` runs inside the ``arm_id`` resolver that names the run folder, in the sweep
preflight for every job, and in the dry run; every problem is reported at once, each naming
the field and what is allowed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptychostab.config.errors import ConfigError
from ptychostab.config.overrides import extra_keys
from ptychostab.config.schema import (
    Accelerator,
    ArchName,
    Choice,
    ClipAlgorithm,
    LossName,
    OptimizerName,
    Progress,
    SchedulerName,
    TrainConfig,
)
from ptychostab.data.spec import DataConfig
from ptychostab.runs import records

# --- validation ----------------------------------------------------------------------------------
SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: ``retry`` values: the final endings other than ok (docs/contracts.md, status families)
RETRYABLE = (*records.OTHER_FINAL_KINDS, *records.INSTABILITY_KINDS)
#: The run folder scheme (hydra.run.dir, hydra.sweep.subdir must end with it).
RUN_FOLDER = "${arm_id:}/seed=${job:seed}"
FOLDER_SCHEME = (
    "ptychostab names every run folder <arm_id>/seed=<seed> under "
    "<paths.output_root>/<sweep>/ (arm_id: the hash of the config that defines the arm), so a "
    "rerun skips finished runs and resumes interrupted ones in place, and the aggregator finds "
    "them; a job number or an override list does not identify a run (it changes with the "
    "grid). Keep the default, or end yours with it, e.g. "
    "'hydra.sweep.subdir=\"mine/" + RUN_FOLDER + "\"' (quoted so); choose where runs go with "
    "paths.output_root=<dir> and sweep=<name>")



def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key, throw_on_missing=False) if isinstance(
            self.cfg, DictConfig) else _select(self.cfg, key)

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def integer(self, key: str, low: int, what: str = "") -> None:
        v = self.get(key)
        if not _int(v) or v < low:
            self.add(f"{key}={v!r}: must be an integer >= {low}{what}")

    def opt_integer(self, key: str, low: int, what: str = "") -> None:
        if self.get(key) is not None:
            self.integer(key, low, what + " (or null)")

    def number(self, key: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, what: str = "") -> None:
        v = self.get(key)
        ok = _num(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
        if not ok:
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
            rng = " and ".join(x for x in (lo, hi) if x)
            self.add(f"{key}={v!r}: must be a finite number{' ' + rng if rng else ''}{what}")

    def choice(self, key: str, enum: type[Choice]) -> None:
        v = self.get(key)
        if str(v) not in enum.names():
            self.add(f"{key}={v!r}: unknown; allowed: {', '.join(enum.names())}")


def _select(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def problems(cfg: Any) -> list[str]:
    """Every problem of a composed config (DictConfig or plain dict), [] when it can run."""
    c = _Checker(cfg)
    for check in _CHECKS:
        check(c)
    return c.problems


def _check_run(c: _Checker) -> None:
    """Checks of seed, depth, sweep, paths, pack, retry."""
    for extra in extra_keys(c.cfg, TrainConfig):
        c.add(extra)
    c.integer("seed", 0)
    c.integer("depth", 1, " (spectral blocks of the generator)")
    sweep = c.get("sweep")
    if not isinstance(sweep, str) or not SWEEP_NAME.match(sweep):
        c.add(f"sweep={sweep!r}: must be a folder name of letters, digits, '_', '.', '-'")
    if not c.get("paths.output_root"):
        c.add("paths.output_root is empty: the folder that receives <sweep>/<arm_id>/seed=<k>/")
    c.integer("pack", 1, " (seeds of one arm per job; 1: unpacked)")
    retry = c.get("retry")
    if retry is None or isinstance(retry, str) or not all(isinstance(x, str) for x in retry):
        c.add(f"retry={retry!r}: must be a list of final endings, e.g. retry=[oom,exception]; "
              f"allowed: {', '.join(RETRYABLE)}")
    else:
        for x in retry:
            if x not in RETRYABLE:
                why = (" (ok is never retrained)" if x == records.OK else
                       " (not final: a rerun resumes or retries it anyway)"
                       if x in records.INCOMPLETE_KINDS + records.READ_PROBLEMS else "")
                c.add(f"retry: {x!r} is not a final ending that can be retried{why}; "
                      f"allowed: {', '.join(RETRYABLE)}")


def _check_arch(c: _Checker) -> None:
    """Checks of the generator (``arch.*``)."""
    c.choice("arch.name", ArchName)
    c.integer("arch.fno_blocks", 1, " (spectral blocks; defaults to ${depth})")
    c.integer("arch.hidden_channels", 1)
    c.integer("arch.n_modes", 1)
    if c.get("arch.corners") not in (1, 2):
        c.add(f"arch.corners={c.get('arch.corners')!r}: allowed: 1 (reference), 2 (canonical)")
    hidden, cap = c.get("arch.hidden_channels"), c.get("arch.max_hidden_channels")
    if cap is not None and (not _int(cap) or (_int(hidden) and cap < hidden)):
        c.add(f"arch.max_hidden_channels={cap!r}: must be null or an integer >= "
              f"arch.hidden_channels={hidden!r}")
    c.opt_integer("arch.max_levels", 1)
    c.opt_integer("arch.levels", 1)
    c.number("arch.gamma_init")
    if c.get("arch.layerscale_init") is not None:
        c.number("arch.layerscale_init", low=0, low_open=True, what=" (or null)")
    c.integer("arch.fno_cnn_blocks", 0)


def _check_clip(c: _Checker) -> None:
    """Checks of gradient clipping (``clip.*``)."""
    c.choice("clip.algorithm", ClipAlgorithm)
    algo, value = str(c.get("clip.algorithm")), c.get("clip.value")
    meaning = {"norm": "the global grad-norm threshold", "value": "the per-element bound",
               "agc": "the AGC clip factor lambda, typically 0.01-0.1"}
    if algo == "none":
        if value is not None:
            c.add(f"clip.value={value!r} is set but clip.algorithm=none ignores it: drop "
                  f"clip.value or choose clip=norm|value|agc")
    elif algo in meaning:
        if value is None:
            c.add(f"clip.value is missing: clip.algorithm={algo} needs a value > 0 "
                  f"({meaning[algo]})")
        else:
            c.number("clip.value", low=0, low_open=True, what=f" ({meaning[algo]})")
    c.number("clip.agc_eps", low=0, low_open=True)
    exclude = c.get("clip.agc_exclude")
    if exclude is None or isinstance(exclude, str) or not all(isinstance(x, str) for x in exclude):
        c.add(f"clip.agc_exclude={exclude!r}: must be a list of submodule names, e.g. [head]")


def _check_trainer(c: _Checker) -> None:
    """Checks of optimisation, trainer, trackers and the drift probe."""
    c.integer("trainer.max_epochs", 1)
    c.integer("trainer.batch_size", 1)
    c.number("trainer.lr", low=0, low_open=True)
    c.choice("trainer.optimizer", OptimizerName)
    c.number("trainer.weight_decay", low=0)
    c.number("trainer.momentum", low=0, high=1, high_open=True)
    betas = c.get("trainer.betas")
    if betas is None or len(betas) != 2 or not all(_num(b) and 0 <= b < 1 for b in betas):
        c.add(f"trainer.betas={_listish(betas)}: must be two numbers in [0, 1)")
    c.choice("trainer.scheduler", SchedulerName)
    c.integer("trainer.warmup_epochs", 0)
    epochs, warm = c.get("trainer.max_epochs"), c.get("trainer.warmup_epochs")
    if _int(epochs) and _int(warm) and warm >= epochs > 0 and warm > 0:
        c.add(f"trainer.warmup_epochs={warm} must be < trainer.max_epochs={epochs}")
    c.number("trainer.lr_min_ratio", low=0, high=1, low_open=True)
    c.number("trainer.plateau_factor", low=0, high=1, low_open=True, high_open=True)
    c.integer("trainer.plateau_patience", 0)
    c.number("trainer.plateau_min_lr", low=0)
    c.number("trainer.exp_gamma", low=0, high=1, low_open=True)
    c.choice("trainer.loss", LossName)
    c.choice("trainer.accelerator", Accelerator)
    if c.get("trainer.cuda_graphs") and str(c.get("trainer.accelerator")) == "cpu":
        c.add("trainer.cuda_graphs=true needs CUDA but trainer.accelerator=cpu")
    c.integer("trainer.sync_every", 1)
    c.choice("trainer.progress", Progress)
    c.integer("diagnostics.every_n_epochs", 0, " (0 turns the drift probe off)")
    trackers = [n for n in ("csv", "tensorboard", "mlflow", "wandb")
                if c.get(f"logger.{n}") is not None and c.get(f"logger.{n}.enabled") is not False]
    if trackers:
        from ptychostab.tracking import MissingTracker, check_available

        try:
            check_available(trackers)
        except MissingTracker as err:
            c.add(f"logger: {err}")
    mode = c.get("logger.wandb.mode") if c.get("logger.wandb") is not None else None
    if mode is not None and mode not in ("online", "offline", "disabled"):
        c.add(f"logger.wandb.mode={mode!r}; allowed: online, offline, disabled (or null: "
              "$WANDB_MODE, else offline)")
    every, sync = c.get("trainer.log_every_n_steps"), c.get("trainer.sync_every")
    if every is not None:
        c.integer("trainer.log_every_n_steps", 0, " (or null: every sync point)")
        if _int(every) and _int(sync) and sync > 0 and every > 0 and every % sync:
            c.add(f"trainer.log_every_n_steps={every} must be a multiple of "
                  f"trainer.sync_every={sync}, or 0 (no per-step logging)")
    c.integer("trainer.eval_batch_size", 1)
    c.number("trainer.max_data_on_device_gb", low=0)


def _check_failure(c: _Checker) -> None:
    """Checks of the failure thresholds (``failure.*``)."""
    c.number("failure.loss_factor", low=1, low_open=True)
    c.number("failure.grad_norm_bound", low=0, low_open=True)
    c.integer("failure.patience_steps", 1)
    if c.get("failure.collapse_rel_std") is not None:
        c.number("failure.collapse_rel_std", low=0, what=" (or null: off)")
    if c.get("failure.collapse_ssim") is not None:
        c.number("failure.collapse_ssim", low=0, high=1, what=" (or null: off)")
    c.opt_integer("failure.test_inject_nan_step", 0)
    c.opt_integer("failure.test_inject_exception_step", 0)


def _check_plan_cluster(c: _Checker) -> None:
    """Checks of the dry run's estimates and the launcher resources."""
    if c.get("plan.max_memory_gb") is not None:
        c.number("plan.max_memory_gb", low=0, low_open=True, what=" (or null: no limit)")
    c.number("plan.step_overhead_s", low=0)
    c.number("plan.gb_per_s", low=0, low_open=True)
    c.integer("plan.parallel_jobs", 1)
    c.integer("cluster.timeout_min", 1)
    c.integer("cluster.signal_delay_s", 0)
    c.integer("cluster.max_num_timeout", 0)
    c.integer("cluster.array_parallelism", 1)
    c.number("cluster.poll_interval_s", low=0, low_open=True)
    c.number("cluster.lost_job_grace_s", low=0)
    tmin, delay = c.get("cluster.timeout_min"), c.get("cluster.signal_delay_s")
    if _int(tmin) and _int(delay) and tmin * 60 <= delay:
        c.add(f"cluster.timeout_min={tmin} must exceed cluster.signal_delay_s={delay} s: the "
              f"pre-timeout signal would come before the job starts (submitit then kills it as "
              f"'timed-out and not checkpointable')")
    for key in ("cluster.gpus_per_node", "cluster.cpus_per_task", "cluster.mem_gb"):
        c.opt_integer(key, 0 if key.endswith("gpus_per_node") else 1)
    c.integer("cluster.tasks_per_node", 1)
    if _int(c.get("cluster.tasks_per_node")) and c.get("cluster.tasks_per_node") > 1:
        c.add(f"cluster.tasks_per_node={c.get('cluster.tasks_per_node')}: a run is one process "
              f"(no DDP here); allowed: 1")


def _check_data(c: _Checker) -> None:
    """Checks of the data: the physics package owns these checks (DataConfig.validate)."""
    data = c.get("data")
    if data is not None:
        try:
            spec = OmegaConf.to_container(data, resolve=True, enum_to_str=True) if isinstance(
                data, DictConfig) else data
            DataConfig.from_any(spec).validate()
        except (ValueError, TypeError) as err:
            c.add(str(err))


_CHECKS = (_check_run, _check_arch, _check_clip, _check_trainer, _check_failure,
           _check_plan_cluster, _check_data)


def _listish(v: Any) -> str:
    try:
        return str(list(v))
    except TypeError:
        return repr(v)


def launcher_problems(cfg: Any) -> list[str]:
    """Problems of the launcher settings as the launcher will read them (``hydra.launcher``,
    whether they came from ``cluster.*``, a site file or ``hydra.launcher.*`` overrides)."""
    out: list[str] = []
    node = OmegaConf.select(cfg, "hydra.launcher", default=None)
    if not isinstance(node, DictConfig):
        return out
    try:
        launcher = OmegaConf.to_container(node, resolve=True)
    except Exception as err:
        return [f"hydra.launcher cannot be resolved: {err}"]
    assert isinstance(launcher, dict)
    tmin, delay = launcher.get("timeout_min"), launcher.get("signal_delay_s")
    if _int(tmin) and _int(delay) and tmin * 60 <= delay:
        out.append(f"hydra.launcher.timeout_min={tmin} must exceed hydra.launcher.signal_delay_s="
                   f"{delay} s (set by cluster.timeout_min / cluster.signal_delay_s, a site "
                   f"launcher file or hydra.launcher.*): the pre-timeout signal would come "
                   f"before the job starts")
    tasks = launcher.get("tasks_per_node")
    if _int(tasks) and tasks != 1:
        out.append(f"hydra.launcher.tasks_per_node={tasks}: a run is one process; allowed: 1")
    return out


def folder_problems(cfg: Any, *, multirun: bool) -> list[str]:
    """``hydra.run.dir`` / ``hydra.sweep.subdir`` must keep ptychostab's run-folder scheme."""
    key = "hydra.sweep.subdir" if multirun else "hydra.run.dir"
    node = OmegaConf.select(cfg, key.rsplit(".", 1)[0], default=None)
    if not isinstance(node, DictConfig):
        return []
    raw = OmegaConf.to_container(node, resolve=False).get(key.rsplit(".", 1)[1])
    if not isinstance(raw, str):
        return []
    if raw.replace("${seed}", "${job:seed}").rstrip("/").endswith(RUN_FOLDER):
        return []
    return [f"{key}={raw}: {FOLDER_SCHEME}"]


#: The only run-folder form allowed with ``pack > 1`` (hydra.sweep.subdir).
PACKED_SUBDIR = RUN_FOLDER
PACK_SCHEME = (
    "with pack > 1 one job trains several seeds of an arm, each in its own folder "
    "<paths.output_root>/<sweep>/<arm_id>/seed=<seed>; the preflight names those folders in "
    "packs.json, the pack's leader writes into them, and reruns regroup the unfinished seeds "
    "by them, so the seeds of a pack stay apart only under the default scheme. Drop the "
    "hydra.sweep.subdir override (choose where runs go with paths.output_root=<dir> and "
    "sweep=<name>), or run with pack=1")


def pack_problems(cfg: Any) -> list[str]:
    """With ``pack > 1`` a sweep keeps the default ``hydra.sweep.subdir`` (see PACK_SCHEME)."""
    pack = OmegaConf.select(cfg, "pack", default=1) if isinstance(cfg, DictConfig) else (
        _select(cfg, "pack") or 1)
    if not _int(pack) or pack <= 1:
        return []
    node = OmegaConf.select(cfg, "hydra.sweep", default=None)
    if not isinstance(node, DictConfig):
        return []
    raw = OmegaConf.to_container(node, resolve=False).get("subdir")
    if not isinstance(raw, str):
        return []
    if raw.replace("${seed}", "${job:seed}").strip("/") == PACKED_SUBDIR:
        return []
    return [f"hydra.sweep.subdir={raw} with pack={pack}: {PACK_SCHEME}"]


def validate(cfg: Any, *, where: str = "") -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (nothing when it can run)."""
    found = problems(cfg)
    if found:
        head = f"invalid config{' for ' + where if where else ''} ({len(found)} problem"
        head += "s):" if len(found) > 1 else "):"
        raise ConfigError("\n  - ".join([head, *found]))
