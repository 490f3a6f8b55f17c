"""Calibrated run-time estimates: a few real training steps of each arm, timed on a device.

The dry run (``python -m ptychostab.cli.plan``) calls :func:`calibrate_plan`; the sweep
preflight never does: it only reads the cache (:func:`read_cache`, :func:`lookup`) through
:func:`ptychostab.launch.estimate.estimate_times`.

What is timed (:func:`measure_arm`)
    The job's own training step: the generator (``runs.build.build_model``), the physics loss,
    the clipper (``GradientClipper``), the optimizer (``build_optimizer``) and the failure
    monitor, as :class:`~ptychostab.training.PtychoModule` builds and steps them (CUDA graphs
    and ``torch.compile`` when the arm asks for them), at the arm's batch size and patch size,
    on random positive amplitudes of the data's shape placed on the device (the data are
    never simulated here). The first steps are warm-up and are not timed (1 on a CPU, 3 on
    CUDA, 5 with CUDA graphs: lazy initialisation, cuFFT plans, the capture; a compilation
    falls in the warm-up too: in the cost, not in the figure). Then blocks of 1, 1, 2, 4, ...
    steps are timed (``synchronize`` after each block on CUDA) until the arm's share of the
    budget is spent or enough steps are timed (:data:`ENOUGH_S` seconds of steps, or an
    eighth of the arm's share when that is more: a larger budget buys more steps), at least
    :data:`MIN_STEPS` and at most :data:`MAX_STEPS` steps; the step time is the median
    per-step time of the blocks. Then one validation batch (the eval batch on CUDA, after a
    warm-up call; the training batch size on a CPU), the drift probe (when
    ``diagnostics.every_n_epochs`` > 0) and one ``last.ckpt`` (snapshot and save to a
    temporary file).

How an epoch is scaled
    ``epoch_s = ceil(n_train / batch_size) x step_s + n_test x val_s_per_pattern +
    epoch_end_s`` (``epoch_end_s``: the checkpoint, plus the probe / every_n_epochs).

The cache
    One JSON file, ``calibration.json`` in ``paths.cache_dir`` (``$PTYCHOSTAB_CACHE``, by
    default ``<repo>/.cache/datasets``: the folder a cluster's jobs already share), or the file
    ``$PTYCHOSTAB_CALIBRATION`` names. ``{"schema_version": 1, "entries": {"<device> | <shape
    key>": entry}}``; an entry holds the device name, the shape key and its fields, the
    figures (``step_s``, ``val_s_per_pattern``, ``epoch_end_s``, ``epoch_s``), the timed blocks
    (``[steps, seconds]``; ``step_s_min``: the fastest block's per-step time), the steps timed
    and warm-up steps, the cost, the host, the SLURM partition it ran on (``partition``, from
    ``SLURM_JOB_PARTITION``; None outside a SLURM job), CPU count, load average, torch version
    and date. Written under a file lock (``.calibration.json.lock`` beside it), atomically
    (read, merge, replace): concurrent calibration jobs do not lose each other's entries. A
    dry run reuses an entry of its device and shape; ``--calibrate`` times the arms again.

Keying
    Device: ``"cuda: <torch.cuda.get_device_name>"`` or ``"cpu: <CPU model>, <k> threads"``
    (torch's intra-op threads). Shape (:func:`shape_key`): a hash of what sets a step's cost:
    the whole ``arch`` node, the ``clip`` node without its threshold, the patch size,
    channels, train/test pattern counts, the trainer's batch sizes, optimizer, loss and fast
    paths, and the probe period. A local sweep (the basic or submitit_local launcher) uses the
    entry of this machine's device only (the one the job would run on: ``trainer.accelerator``,
    ``auto`` = CUDA when present). A SLURM sweep (``launcher=slurm``) uses only entries that
    were written inside a SLURM job on its ``cluster.partition`` (the slowest of them when
    several devices were calibrated there); this machine's figures never stand for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptychostab.atomic import atomic_write_json
from ptychostab.launch.grid import TODO

if TYPE_CHECKING:
    from ptychostab.launch.plan import Plan, PlannedArm

__all__ = ["CACHE_ENV", "CACHE_NAME", "DEFAULT_BUDGET_S", "CalibrationReport", "StepTiming",
           "cache_path", "calibrate_plan", "device_name", "entry_label", "local_device_name",
           "lookup", "measure_arm", "read_cache", "shape_key", "store", "time_steps"]

log = logging.getLogger(__name__)

SCHEMA = 1
CACHE_NAME = "calibration.json"
CACHE_ENV = "PTYCHOSTAB_CALIBRATION"
DEFAULT_BUDGET_S = 30.0  # a whole study's calibration (``--calibrate-budget`` for more)
MIN_STEPS = 2  # timed steps per arm, whatever the budget
MAX_STEPS = 200
ENOUGH_S = 2.0  # timed seconds per arm after which more steps add little
SYNTH_BATCHES = 64  # synthetic training batches placed on the device (at most n_train)


# --- the cache -----------------------------------------------------------------------------------
def cache_path(cfg: Mapping[str, Any]) -> Path:
    """The calibration cache of a (plain, resolved) job config: ``$PTYCHOSTAB_CALIBRATION``,
    else ``<paths.cache_dir>/calibration.json``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(str(cfg["paths"]["cache_dir"])).expanduser() / CACHE_NAME


def read_cache(path: Path) -> dict:
    """The cache's entries (``{key: entry}``); an absent, damaged or foreign file is empty."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("calibration cache %s unreadable (%s): ignored", path, err)
        return {}
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA:
        return {}
    entries = data.get("entries")
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(
        entries, dict) else {}


def store(path: Path, entries: Sequence[dict]) -> None:
    """Merge ``entries`` into the cache at ``path`` (under a file lock; atomic replace; other
    top-level keys are kept)."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        merged = read_cache(path)
        for entry in entries:
            merged[entry_key(entry["device"], entry["shape"])] = entry
        atomic_write_json(path, {**_other_keys(path), "schema_version": SCHEMA,
                                 "entries": merged})


def _other_keys(path: Path) -> dict:
    """Top-level keys besides the entries (e.g. a committed file's ``about``), kept."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA:
        return {}
    return {k: v for k, v in data.items() if k not in ("schema_version", "entries")}


def entry_key(device: str, shape: str) -> str:
    """The cache key of a device name and a shape key: ``"<device> | <shape>"``."""
    return f"{device} | {shape}"


# --- devices -------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Any) -> str:
    """The cache's name of a ``torch.device``: the GPU's name, or the CPU model and threads."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    return f"cpu: {cpu_model()}, {threads} thread{'s' if threads != 1 else ''}"


def local_device_name(cfg: Mapping[str, Any]) -> str | None:
    """The device a job of ``cfg`` would train on here (None: CUDA asked for and absent)."""
    import torch

    accel = str(cfg["trainer"]["accelerator"])
    cuda = torch.cuda.is_available()
    if accel == "cuda" and not cuda:
        return None
    if accel == "cuda" or (accel == "auto" and cuda):
        return device_name(torch.device("cuda", torch.cuda.current_device()))
    return device_name("cpu")


# --- shape ---------------------------------------------------------------------------------------
_TRAINER_KEYS = ("batch_size", "eval_batch_size", "optimizer", "loss", "compile", "cuda_graphs",
                 "tf32", "sync_every", "max_data_on_device_gb")


def shape_fields(cfg: Mapping[str, Any]) -> dict:
    """What sets the cost of an arm's epoch (see the module docstring)."""
    from ptychostab.data.spec import DataConfig

    spec = DataConfig.from_any(cfg["data"])
    clip = {k: v for k, v in dict(cfg["clip"]).items() if k != "value"}
    trainer = cfg["trainer"]
    diagnostics = cfg.get("diagnostics") or {}
    return {"arch": dict(cfg["arch"]), "clip": clip, "N": spec.N, "channels": spec.channels,
            "n_train": spec.n_train, "n_test": spec.n_test,
            "trainer": {k: trainer.get(k) for k in _TRAINER_KEYS},
            "probe_every": int(diagnostics.get("every_n_epochs", 0) or 0)}


def shape_key(cfg: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of :func:`shape_fields` (canonical JSON)."""
    text = json.dumps(shape_fields(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- looking figures up --------------------------------------------------------------------------
def lookup(cache: Mapping[str, dict], cfg: Mapping[str, Any], *, remote: bool) -> dict | None:
    """The cache entry that stands for ``cfg``'s jobs, or None.

    Parameters
    ----------
    cache : mapping
        :func:`read_cache`'s entries.
    cfg : mapping
        A plain resolved job config.
    remote : bool
        The jobs run elsewhere (``launcher=slurm``): only entries written inside a SLURM job
        on ``cluster.partition`` count (the slowest when several devices were calibrated
        there); else only the entry of the device a job would use on this machine.
    """
    try:
        shape = shape_key(cfg)
    except Exception:  # no data spec: nothing to key on
        return None
    if not remote:
        device = local_device_name(cfg)
        return cache.get(entry_key(device, shape)) if device else None
    partition = (cfg.get("cluster") or {}).get("partition")
    if not partition:
        return None
    found = [e for e in cache.values()
             if e.get("shape") == shape and e.get("partition") == str(partition)
             and isinstance(e.get("epoch_s"), (int, float))]
    return max(found, key=lambda e: e["epoch_s"]) if found else None


def entry_label(entry: Mapping[str, Any]) -> str:
    """``calibrated on <device>, N steps`` (and the partition, the date)."""
    where = f" (partition {entry['partition']})" if entry.get("partition") else ""
    return (f"calibrated on {entry['device']}{where}, {entry['steps']} steps, "
            f"{str(entry.get('date', '?'))[:10]}")


# --- timing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepTiming:
    """What :func:`time_steps` measured."""

    step_s: float  # median per-step seconds of the timed blocks (warm-up excluded)
    steps: int  # timed steps
    warmup: int  # untimed warm-up steps
    warmup_s: float  # seconds the warm-up took (not in step_s)
    blocks: tuple[tuple[int, float], ...] = field(default=())  # (steps, seconds) per block


def time_steps(step: Callable[[], None], *, warmup: int, budget_s: float,
               min_steps: int = MIN_STEPS, max_steps: int = MAX_STEPS,
               enough_s: float = ENOUGH_S, sync: Callable[[], None] = lambda: None,
               clock: Callable[[], float] = time.perf_counter) -> StepTiming:
    """Run ``warmup`` untimed steps, then time blocks of 1, 1, 2, 4, ... steps.

    Parameters
    ----------
    step : callable
        One training step.
    warmup : int
        Untimed steps first (their time is reported apart, never in ``step_s``).
    budget_s : float
        Seconds for the whole call, warm-up included: no new block starts that would not end
        within it, once ``min_steps`` steps are timed.
    min_steps, max_steps : int
        Timed steps, at least and at most.
    enough_s : float
        No block starts that would take the timed steps past this (once ``min_steps`` ran).
    sync : callable
        Waits for the device (``torch.cuda.synchronize``); called after the warm-up and after
        each block.
    clock : callable
        Seconds (monotonic).

    Returns
    -------
    StepTiming
        ``step_s`` is the median of the blocks' per-step times.
    """
    t0 = clock()
    for _ in range(int(warmup)):
        step()
    sync()
    t1 = clock()
    blocks: list[tuple[int, float]] = []
    done, n = 0, 1
    while n > 0:
        start = clock()
        for _ in range(n):
            step()
        sync()
        blocks.append((n, clock() - start))
        done += n
        timed = sum(s for _, s in blocks)
        per = timed / done
        left = min(budget_s - (clock() - t0), enough_s - timed)
        room = int(left / per) if per > 0 else max_steps
        n = min(done, max_steps - done, max(room, 0))  # doubling blocks, within the budget
        n = max(n, min(min_steps, max_steps) - done)  # ... and at least min_steps in all
    per_step = statistics.median(s / k for k, s in blocks)
    return StepTiming(step_s=per_step, steps=done, warmup=int(warmup), warmup_s=t1 - t0,
                      blocks=tuple(blocks))


def warmup_steps(device_type: str, settings: Any) -> int:
    """Untimed steps: 1 on a CPU; on CUDA 3 (lazy initialisation, cuFFT plans, autotuning),
    5 with CUDA graphs (3 eager steps, the capture, a first replay)."""
    if device_type != "cuda":
        return 1
    return 5 if settings.cuda_graphs else 3


def measure_arm(cfg: Mapping[str, Any], *, budget_s: float,
                clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time a few real training steps of the arm ``cfg`` on the device its job would use.

    Parameters
    ----------
    cfg : mapping
        A plain resolved job config (:class:`~ptychostab.launch.plan.PlannedArm` ``.cfg``).
    budget_s : float
        This arm's share of the study's budget (build, warm-up, steps, validation, epoch end);
        at least :data:`MIN_STEPS` steps are timed whatever it says.
    clock : callable

    Returns
    -------
    dict
        The cache entry (see the module docstring).
    """
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from ptychostab.data.spec import DataConfig
    from ptychostab.runs.build import TorchGlobals, build_model, configure_device, resolve_device
    from ptychostab.training.clipping import GradientClipper
    from ptychostab.training.module import PtychoModule
    from ptychostab.training.monitors import FailureSettings
    from ptychostab.training.settings import TrainerSettings

    t_start = clock()
    dcfg = OmegaConf.create(dict(cfg))
    settings = TrainerSettings.from_config(dcfg.trainer)
    spec = DataConfig.from_any(cfg["data"])
    bs = settings.batch_size
    with TorchGlobals():
        device = resolve_device(settings.accelerator)
        configure_device(device, settings.tf32)
        if device.type == "cpu":  # as the job's Trainer(deterministic=True) on a CPU
            torch.use_deterministic_algorithms(True)
        cuda = device.type == "cuda"
        sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
        L.seed_everything(0, workers=False, verbose=False)
        generator = build_model(dcfg).to(device)
        rng = torch.Generator().manual_seed(0)
        shape = (spec.channels, spec.N, spec.N)
        n_syn = bs * max(1, min(spec.n_train // bs, SYNTH_BATCHES)) if spec.n_train >= bs \
            else spec.n_train
        val_n = min(spec.n_test, settings.eval_batch_size if cuda else bs)
        train = (0.05 + torch.rand((n_syn, *shape), generator=rng)).to(device)
        val = (0.05 + torch.rand((val_n, *shape), generator=rng)).to(device)
        module = PtychoModule(
            generator, _probe(spec).to(device), train, val, settings=settings,
            clipper=GradientClipper.from_config(dcfg.clip),
            failure=FailureSettings.from_config(dcfg.failure), seed=0, device=device)
        batches = module.batches.index_batches(0)

        def step() -> None:
            if module.step_in_epoch >= len(batches):  # the synthetic set is a few batches
                module.monitor.start_epoch()
                module.step_in_epoch = 0
            module.training_step(batches[module.step_in_epoch], module.step_in_epoch)

        build_s = clock() - t_start
        timing = time_steps(step, warmup=warmup_steps(device.type, settings),
                            budget_s=max(budget_s - build_s, 0.0),
                            enough_s=max(ENOUGH_S, budget_s / 8), sync=sync, clock=clock)
        val_s = _timed(module.validate, sync, clock, warm=cuda) / val_n
        probe_s = _probe_s(module, cfg, sync, clock)
        ckpt_s = _checkpoint_s(module, clock)
    every = int((cfg.get("diagnostics") or {}).get("every_n_epochs", 0) or 0)
    epoch_end_s = ckpt_s + (probe_s / every if every > 0 else 0.0)
    steps_per_epoch = math.ceil(spec.n_train / bs)
    epoch_s = steps_per_epoch * timing.step_s + spec.n_test * val_s + epoch_end_s
    return {
        "device": device_name(device), "shape": shape_key(cfg), "shape_fields": shape_fields(cfg),
        "label": _label(cfg), "steps": timing.steps, "warmup_steps": timing.warmup,
        "step_s": timing.step_s, "steps_per_epoch": steps_per_epoch,
        "step_s_min": min(s / k for k, s in timing.blocks),
        "blocks": [[k, round(s, 6)] for k, s in timing.blocks],
        "val_s_per_pattern": val_s, "val_patterns": spec.n_test, "val_batch_timed": val_n,
        "epoch_end_s": epoch_end_s, "checkpoint_s": ckpt_s, "probe_s": probe_s,
        "epoch_s": epoch_s, "cost_s": clock() - t_start, "budget_s": budget_s,
        "partition": os.environ.get("SLURM_JOB_PARTITION") or None,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
        "host": socket.gethostname(), "cpu_count": os.cpu_count(), "load_avg": _load(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages (a shared machine's figures are slower under load)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _label(cfg: Mapping[str, Any]) -> str:
    arch, clip = cfg["arch"], cfg["clip"]
    return (f"{arch.get('name')} d{arch.get('fno_blocks')} w{arch.get('hidden_channels')} "
            f"corners={arch.get('corners')} "
            f"clip={clip.get('algorithm')} N={cfg['data']['N']} "
            f"batch={cfg['trainer']['batch_size']}")


def _probe(spec: Any):
    import numpy as np
    import torch

    from ptychostab.physics.probe import defocused_disk, make_probe

    try:
        probe = make_probe(spec.probe, spec.N)
    except Exception:  # e.g. an NPZ probe absent here: the cost is the same for any probe
        probe = defocused_disk(spec.N)
    return torch.as_tensor(np.asarray(probe, dtype=np.complex64))


def _timed(fn: Callable[[], Any], sync: Callable[[], None], clock: Callable[[], float], *,
           warm: bool) -> float:
    if warm:
        fn()
        sync()
    t0 = clock()
    fn()
    sync()
    return clock() - t0


def _probe_s(module: Any, cfg: Mapping[str, Any], sync: Callable[[], None],
             clock: Callable[[], float]) -> float:
    """One drift-probe measurement (the epoch-end sink's forward with statistics)."""
    every = int((cfg.get("diagnostics") or {}).get("every_n_epochs", 0) or 0)
    if every <= 0:
        return 0.0
    from ptychostab.diagnostics.drift import PROBE_SIZE, DriftProbe

    n = min(PROBE_SIZE, int(module.val_data.shape[0]))
    probe = DriftProbe(module.generator, module.val_data[:n])
    return _timed(lambda: probe.measure(0), sync, clock, warm=False) * PROBE_SIZE / n


def _checkpoint_s(module: Any, clock: Callable[[], float]) -> float:
    """One ``last.ckpt``: the snapshot to the CPU and the save (to a temporary file)."""
    from ptychostab.runs.checkpoint import atomic_torch_save, rng_state, snapshot

    t0 = clock()
    state = snapshot({"training": module.training_state(), "rng": rng_state()})
    with tempfile.TemporaryDirectory(prefix="ptychostab-calibrate-") as tmp:
        atomic_torch_save(state, Path(tmp) / "last.ckpt")
    return clock() - t0


# --- a whole plan --------------------------------------------------------------------------------
@dataclass
class CalibrationReport:
    """What :func:`calibrate_plan` did."""

    path: Path
    device: str | None
    budget_s: float
    cost_s: float = 0.0
    measured: list[str] = field(default_factory=list)  # arm ids timed now
    shapes: int = 0  # arm shapes timed now (arms of one shape are timed once)
    cached: list[str] = field(default_factory=list)  # arm ids whose entry was already there
    skipped: list[str] = field(default_factory=list)  # not timed: the budget was spent
    failed: list[str] = field(default_factory=list)  # "arm_id: why"
    remote: bool = False
    partition: str | None = None

    def lines(self) -> list[str]:
        """The dry run's account of the calibration: device, steps, cost against the bound."""
        out = []
        if self.measured or self.cached or self.skipped or self.failed:
            out.append(
                f"calibration on {self.device}: {self.shapes} arm shape(s) timed in "
                f"{self.cost_s:.1f} s (bound: --calibrate-budget {self.budget_s:g} s; an arm "
                f"starts only if the arms timed before it say it fits, and gets at least "
                f"{MIN_STEPS} timed steps)"
                + (f", {len(self.cached)} from the cache" if self.cached else "")
                + f"; cache {self.path}")
        if self.skipped:
            out.append(f"  {len(self.skipped)} arm(s) not timed within the budget (their figure "
                       f"falls back, labelled): --calibrate-budget "
                       f"{_more_budget(self)} times them")
        for why in self.failed:
            out.append(f"  not calibrated: {why}")
        if self.remote and self.measured:
            here = os.environ.get("SLURM_JOB_PARTITION")
            if not here:
                out.append(f"  these figures are this machine's ({self.device}), not partition "
                           f"{self.partition!r}'s: outside a SLURM job they are kept for this "
                           f"machine only and the sweep's estimate stays uncalibrated")
            elif here != self.partition:
                out.append(f"  recorded for partition {here!r} (this job's), not "
                           f"cluster.partition={self.partition!r}")
        return out


def _predicted_cost(costs: Sequence[tuple[float, float | None]], memory_gb: float | None
                    ) -> float:
    """What the next arm will cost, from the arms timed so far (scaled by training memory
    when known: the step time follows it, :func:`~.estimate.estimate_times`'s scaling)."""
    per_gb = [c / m for c, m in costs if m]
    if per_gb and memory_gb:
        return statistics.mean(per_gb) * memory_gb
    return statistics.mean(c for c, _ in costs)


def _more_budget(report: CalibrationReport) -> str:
    done = report.shapes
    if not done or report.cost_s <= 0:
        return f"{report.budget_s * 3:g}"
    per = report.cost_s / done
    return f"{math.ceil((per * (done + len(report.skipped))) / 10) * 10:g}"


def calibrate_plan(plan: Plan, *, budget_s: float = DEFAULT_BUDGET_S, force: bool = False,
                   measure: Callable[..., dict] | None = None,
                   clock: Callable[[], float] = time.perf_counter,
                   say: Callable[[str], None] | None = None) -> CalibrationReport:
    """Time the arms of ``plan`` that need a figure and store them in the cache.

    An arm needs one when it has runs to do, is not refused and has no measured epochs of its
    own; arms of one shape are timed once. Entries already in the cache for this machine's
    device are kept unless ``force``. Arms are timed in plan order, each with an equal share
    of what is left of ``budget_s``; an arm starts only while the budget is not spent and the
    arms timed before it (their cost, scaled by training memory) say it fits: the whole costs
    at most ``budget_s`` unless the first arm alone exceeds it (its build, warm-up and
    :data:`MIN_STEPS` steps). Arms left out are listed; their figure falls back, labelled.
    The estimate is not redone here: call :func:`~ptychostab.launch.estimate.estimate_times`.

    Parameters
    ----------
    plan : Plan
    budget_s : float
        Seconds for the whole study (``--calibrate-budget``).
    force : bool
        Time again arms already in the cache (``--calibrate``).
    measure : callable, optional
        ``measure(cfg, budget_s=...) -> entry``; default :func:`measure_arm`.
    clock : callable
    say : callable, optional
        Told ``"calibrating <arm> ..."`` before each arm is timed (the dry run prints it).

    Returns
    -------
    CalibrationReport
    """
    from ptychostab.launch.estimate import measured_arms

    measure = measure or measure_arm
    arms = [a for a in plan.arms.values() if not a.refused]
    first = arms[0].cfg if arms else next(iter(plan.arms.values())).cfg
    path = cache_path(first)
    partition = (first.get("cluster") or {}).get("partition")
    report = CalibrationReport(path=path, device=local_device_name(first), budget_s=budget_s,
                               remote=plan.remote, partition=partition)
    measured_ids = set(measured_arms(plan))
    todo = [a for a in arms if a.arm_id not in measured_ids
            and any(j.arm_id == a.arm_id and j.status == TODO for j in plan.jobs)]
    cache = read_cache(path)
    groups: dict[str, list[PlannedArm]] = {}
    for arm in todo:
        device = local_device_name(arm.cfg)
        if device is None:
            report.failed.append(f"{arm.arm_id}: no CUDA device here")
            continue
        key = entry_key(device, shape_key(arm.cfg))
        if key in cache and not force:
            report.cached.append(arm.arm_id)
            continue
        groups.setdefault(key, []).append(arm)
    t0 = clock()
    new: list[dict] = []
    costs: list[tuple[float, float | None]] = []  # (seconds, memory GB) of the arms timed
    keys = list(groups)
    for i, key in enumerate(keys):
        arm = groups[key][0]
        left = budget_s - (clock() - t0)
        if left <= 0 or (costs and _predicted_cost(costs, arm.memory_gb) > left):
            report.skipped += [a.arm_id for k in keys[i:] for a in groups[k]]
            break
        start = clock()
        if say is not None:
            say(f"calibrating {arm.arm_id} on {key.split(' | ')[0]} ({i + 1}/{len(keys)}, "
                f"{left:.0f} s of the budget left; --no-calibrate skips this)")
        try:
            entry = measure(arm.cfg, budget_s=left / (len(keys) - i))
        except Exception as err:  # calibration is advice: a failure never stops the dry run
            log.warning("calibrating %s failed: %r", arm.arm_id, err)
            report.failed.append(f"{arm.arm_id}: {type(err).__name__}: {err}")
            continue
        costs.append((clock() - start, arm.memory_gb))
        new.append(entry)
        report.shapes += 1
        report.measured += [a.arm_id for a in groups[key]]
    report.cost_s = clock() - t0
    if new:
        try:
            store(path, new)
        except OSError as err:
            report.failed.append(f"cannot write {path}: {err}")
    return report
