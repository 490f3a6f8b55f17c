"""The grid of a sweep, before anything runs: shared by the dry run and the sweep preflight.

:func:`build` expands the grid exactly as Hydra's BasicSweeper does (``hydra.sweeper.params``
first, then the command-line overrides, later keys win; :func:`expand`), composes every job
with Hydra's own ``load_sweep_config`` (what the launcher does on the node), validates it,
names its arm and run folder, and reads its status from ``result.json``. Per arm it asks
``ptychostab.models.describe`` for the parameter count and training-memory estimate (from the
config, no allocation) and estimates the run time. :meth:`Plan.refusals` lists the arms that
cannot be built or exceed ``plan.max_memory_gb``.

Run-time estimate, per epoch of an arm, first that applies:

1. measured: median epoch duration (differences of ``wall_s`` in ``history.csv``) of the arm's
   runs already in the sweep folder;
2. scaled: another arm of the sweep was measured; scale its epoch time by the ratio of the
   training-memory estimates (the networks here are bandwidth-bound convolutions/FFTs);
3. model: ``steps * (plan.step_overhead_s + memory_bytes / (plan.gb_per_s * 1e9))`` with
   ``steps = ceil(n_train / batch_size) + ceil(n_test / eval_batch_size) / 3`` (an evaluation
   step costs about a third of a training step). A crude guess; 1 and 2 replace it.

A run's minutes = remaining epochs (``max_epochs`` - epochs in its history) x epoch time.

Packs (``pack > 1``, :func:`group_packs`): the unfinished jobs that differ only in ``seed`` (same
arm, same other overrides) are grouped, in grid order, into packs of up to ``pack`` seeds; each
pack is one job (its first member, the leader, trains them all in one process). Final runs are
never packed, so a rerun regroups only the unfinished seeds; a pack of one seed is an ordinary
job. A pack's memory estimate is ``K x`` the arm's training-memory estimate plus the dataset's
device bytes once (:func:`dataset_device_gb`); a pack over ``plan.max_memory_gb`` is refused.
``packs.json`` (:func:`write_packs`) lists the packs for the jobs and the launchers.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from ptychostab import config as cfgmod
from ptychostab import identity
from ptychostab.runs import records

PLAN_CSV = "plan.csv"
BASE_COLUMNS = ("sweep", "arm_id", "arm_label", "seed", "overrides", "arch", "clip",
                "clip_value", "depth")
TAIL_COLUMNS = ("params_real", "params_numel", "memory_gb_estimate", "est_minutes", "status",
                "pack")
PACKS_JSON = "packs.json"
PACKS_SCHEMA = 1
DONE, FAILED, TODO = "done", "failed", "todo"


class PlanError(ValueError):
    """The grid cannot be composed or validated; the message lists each bad job."""


@dataclass
class PlannedJob:
    index: int
    overrides: list[str]
    seed: int
    arm_id: str
    run_dir: Path
    status: str  # done | failed | todo
    result_status: str | None = None  # raw status of result.json, None when absent
    epochs_done: int = 0
    wall_s: float | None = None
    est_minutes: float | None = None
    retried: bool = False  # a final ending that `retry` asks to train again (status todo)


@dataclass
class PlannedArm:
    arm_id: str
    label: str
    fields: dict  # identity.arm_dict
    cfg: dict  # plain resolved config of the arm's first job (for describe / estimates)
    seeds: list[int] = field(default_factory=list)
    params_real: int | None = None
    params_numel: int | None = None
    memory_gb: float | None = None
    describe_note: str | None = None  # why there is no parameter count
    refused: str | None = None
    epoch_s: float | None = None
    epoch_s_source: str | None = None  # measured | scaled | model


@dataclass
class Pack:
    """Seeds of one arm trained by one job (the first member, the leader)."""

    pack_id: str  # stable: <arm_id>-seeds-<s1>-<s2>-... (member seeds in grid order)
    arm_id: str
    jobs: list[PlannedJob]
    memory_gb: float | None = None  # K x arm training memory + dataset device bytes once
    dataset_gb: float | None = None
    refused: str | None = None

    @property
    def leader(self) -> PlannedJob:
        return self.jobs[0]

    @property
    def size(self) -> int:
        return len(self.jobs)

    @property
    def seeds(self) -> list[int]:
        return [j.seed for j in self.jobs]


def pack_id_of(arm_id: str, seeds: Sequence[int]) -> str:
    return f"{arm_id}-seeds-" + "-".join(str(s) for s in seeds)


@dataclass
class Plan:
    sweep: str
    sweep_dir: Path
    jobs: list[PlannedJob]
    arms: "OrderedDict[str, PlannedArm]"
    settings: dict  # the `plan` node
    pack_size: int = 1  # the `pack` key (seeds per job)
    packs: list[Pack] = field(default_factory=list)  # packs of >= 2 seeds (pack_size > 1)

    def pack_of(self, overrides: Sequence[str]) -> Pack | None:
        """The pack a job belongs to (None: an ordinary job)."""
        key = tuple(overrides)
        return next((p for p in self.packs if any(tuple(j.overrides) == key for j in p.jobs)),
                    None)

    def final_jobs(self) -> dict[tuple, str]:
        """Jobs not to run again (a final result), keyed by their override tuple."""
        return {tuple(j.overrides): j.result_status or j.status
                for j in self.jobs if j.status in (DONE, FAILED)}

    def refusals(self) -> list[str]:
        return ([f"{a.arm_id}: {a.refused}" for a in self.arms.values() if a.refused]
                + [f"pack {p.pack_id}: {p.refused}" for p in self.packs if p.refused])

    def counts(self) -> dict[str, int]:
        out = {DONE: 0, FAILED: 0, TODO: 0}
        for j in self.jobs:
            out[j.status] += 1
        return out

    def job_for(self, overrides: Sequence[str]) -> PlannedJob | None:
        key = tuple(overrides)
        return next((j for j in self.jobs if tuple(j.overrides) == key), None)


# --- grid expansion ------------------------------------------------------------------------------
def sweeper_params(master: DictConfig) -> dict[str, str]:
    params = OmegaConf.select(master, "hydra.sweeper.params", default=None)
    if not params:
        return {}
    return {str(k): str(v) for k, v in params.items()}


def expand(params: Mapping[str, str], arguments: Sequence[str],
           config_loader: Any = None) -> list[list[str]]:
    """Every job's overrides, as BasicSweeper.sweep builds them (same parser, same order)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    texts = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    parser = OverridesParser.create(config_loader=config_loader)
    parsed = parser.parse_overrides(texts)
    batches = BasicSweeper.split_arguments(parsed, None)
    jobs = [list(job) for batch in batches for job in batch]
    if not jobs:
        empty = []
        for ov in parsed:
            if ov.is_sweep_override():
                try:
                    if not list(ov.sweep_string_iterator()):
                        empty.append(ov.input_line or ov.get_key_element())
                except Exception:
                    pass
        raise PlanError(f"the grid is empty: {', '.join(empty) or 'a swept key'} has no value, so "
                        f"the sweep has no job (e.g. seed=range(0)); give it at least one value, "
                        f"e.g. 'seed=range(10)'. Nothing was launched.")
    return jobs


def is_basic_sweeper(master: DictConfig) -> bool:
    target = str(OmegaConf.select(master, "hydra.sweeper._target_", default=""))
    return target.endswith("BasicSweeper")


# --- building the plan ---------------------------------------------------------------------------
def _seed_of(cfg: DictConfig) -> int:
    return int(cfg.seed)


def _job_dir(job_cfg: DictConfig) -> Path:
    return Path(str(job_cfg.hydra.sweep.dir), str(job_cfg.hydra.sweep.subdir)).absolute()


def _status(run_dir: Path, retry: Sequence[str] = ()) -> tuple[str, str | None, float | None]:
    """(done | failed | todo, raw status, wall_s). A final status listed in ``retry`` is todo."""
    loaded = records.read_json(run_dir / records.RESULT)
    if not loaded.ok or not isinstance(loaded.data, dict):
        return TODO, None, None
    status = loaded.data.get("status")
    wall = loaded.data.get("wall_s")
    wall = float(wall) if isinstance(wall, (int, float)) else None
    if status == records.OK:
        return DONE, status, wall
    if records.is_final(status):
        return (TODO if status in retry else FAILED), status, wall
    return TODO, status, wall  # timeout / preempted: resumed from last.ckpt by the next run


def _history_epochs(run_dir: Path) -> list[float]:
    """Epoch durations of one run (seconds), from history.csv's cumulative wall_s."""
    rows = records.read_history(run_dir / records.HISTORY).data or []
    walls = [r.get("wall_s", math.nan) for r in rows]
    walls = [w for w in walls if isinstance(w, float) and math.isfinite(w)]
    if not walls:
        return []
    if len(walls) == 1:
        return [walls[0]]
    return [b - a for a, b in zip(walls, walls[1:], strict=False) if b > a]


def _split_seed(overrides: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    rest = tuple(o for o in overrides if o.split("=", 1)[0] != "seed")
    seed = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "seed"), None)
    return rest, seed


def _compose_jobs(master: DictConfig, config_loader: Any,
                  job_overrides: list[list[str]]) -> list[tuple[list[str], Any]]:
    """(overrides, job config with hydra node | exception) per job, in grid order.

    Hydra composes each distinct non-seed override set once (a composition costs ~0.2 s); the
    seeds of that set are copies with ``seed`` assigned, which is what a ``seed=<k>`` override
    does. Every job's config is then validated on its own."""
    composed: dict[tuple[str, ...], Any] = {}
    out: list[tuple[list[str], Any]] = []
    for overrides in job_overrides:
        rest, seed = _split_seed(overrides)
        if rest not in composed:
            try:
                composed[rest] = config_loader.load_sweep_config(master, list(overrides))
            except Exception as err:
                composed[rest] = err
        base = composed[rest]
        if isinstance(base, Exception) or seed is None:
            out.append((list(overrides), base))
            continue
        job_cfg = copy.deepcopy(base)
        try:
            with open_dict(job_cfg):
                job_cfg.seed = seed
        except Exception as err:
            job_cfg = err
        out.append((list(overrides), job_cfg))
    return out


def build(master: DictConfig, config_loader: Any, *, describe: bool = True) -> Plan:
    """Compose and validate every job of the sweep ``master`` describes (a MULTIRUN config)."""
    overrides_cli = list(OmegaConf.to_container(master.hydra.overrides.task, resolve=False) or [])
    job_overrides = expand(sweeper_params(master), overrides_cli, config_loader)
    sweep_dir = Path(str(master.hydra.sweep.dir)).absolute()
    retry = tuple(str(x) for x in (OmegaConf.select(master, "retry", default=None) or ()))
    launcher = str(OmegaConf.select(master, "hydra.launcher._target_", default="") or "")
    here = "slurm" not in launcher.lower()  # jobs run on this machine (basic, submitit_local)
    jobs: list[PlannedJob] = []
    arms: OrderedDict[str, PlannedArm] = OrderedDict()
    errors: OrderedDict[str, list[int]] = OrderedDict()
    pack_values: set[Any] = set()
    for index, (overrides, with_hydra) in enumerate(
            _compose_jobs(master, config_loader, job_overrides)):
        try:
            if isinstance(with_hydra, Exception):
                raise with_hydra
            job_cfg = OmegaConf.masked_copy(with_hydra, [k for k in with_hydra if k != "hydra"])
            cfgmod.validate(job_cfg)
            aid = identity.arm_id(job_cfg)
            run_dir = _job_dir(with_hydra)
            pack_values.add(job_cfg.pack)
        except Exception as err:  # composition, interpolation or validation: report them all
            errors.setdefault(_one_line(err), []).append(index)
            continue
        status, raw, wall = _status(run_dir, retry)
        job = PlannedJob(index=index, overrides=list(overrides), seed=_seed_of(job_cfg),
                         arm_id=aid, run_dir=run_dir, status=status, result_status=raw, wall_s=wall,
                  retried=status == TODO and records.is_final(raw),
                  epochs_done=len(records.read_history(run_dir / records.HISTORY).data or []))
        jobs.append(job)
        if aid not in arms:
            plain = OmegaConf.to_container(job_cfg, resolve=True, enum_to_str=True)
            arms[aid] = PlannedArm(arm_id=aid, label=identity.arm_label(job_cfg),
                            fields=identity.arm_dict(job_cfg, overrides), cfg=plain)
        arms[aid].seeds.append(job.seed)
    if errors:
        n_bad = sum(len(v) for v in errors.values())
        shown = [f"{_jobs_text(idx, job_overrides)}: {msg}" for msg, idx in errors.items()]
        raise PlanError("\n  - ".join([f"{n_bad} of {len(job_overrides)} job(s) of sweep "
                                       f"{sweep_dir.name!r} cannot run:", *shown[:10]]
                                      + ([f"... {len(shown) - 10} more"] if len(shown) > 10
                                         else [])))
    if len(pack_values) > 1:
        raise PlanError(f"pack takes one value per sweep (seeds per job), not a sweep of "
                        f"{sorted(pack_values)}: give a single value, e.g. pack=5")
    _check_duplicates(jobs)
    settings = OmegaConf.to_container(master.plan, resolve=True) if "plan" in master else {}
    plan = Plan(sweep=str(master.sweep), sweep_dir=sweep_dir, jobs=jobs, arms=arms,
                settings=dict(settings or {}),
                pack_size=int(next(iter(pack_values))) if pack_values else 1)
    if describe:
        for arm in arms.values():
            _describe(arm, plan.settings)
    if here:
        for arm in arms.values():
            arm.refused = arm.refused or device_problem(arm.cfg)
    plan.packs = group_packs(plan.jobs, plan.pack_size)
    _size_packs(plan)
    _estimate(plan)
    return plan


# --- packs ---------------------------------------------------------------------------------------
def group_packs(jobs: Sequence[PlannedJob], size: int) -> list[Pack]:
    """Packs of up to ``size`` unfinished jobs that differ only in ``seed`` (same arm and same
    other overrides), in grid order; final jobs are never packed; a lone seed is no pack."""
    if size <= 1:
        return []
    groups: OrderedDict[tuple, list[PlannedJob]] = OrderedDict()
    for job in jobs:
        if job.status != TODO:
            continue
        groups.setdefault((job.arm_id, _split_seed(job.overrides)[0]), []).append(job)
    packs = []
    for (arm_id, _), members in groups.items():
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            if len(chunk) > 1:
                packs.append(Pack(pack_id=pack_id_of(arm_id, [j.seed for j in chunk]),
                                  arm_id=arm_id, jobs=chunk))
    return packs


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


def _size_packs(plan: Plan) -> None:
    limit = plan.settings.get("max_memory_gb")
    for pack in plan.packs:
        arm = plan.arms[pack.arm_id]
        pack.dataset_gb = dataset_device_gb(arm.cfg)
        if arm.memory_gb is None or pack.dataset_gb is None:
            continue
        pack.memory_gb = pack.size * arm.memory_gb + pack.dataset_gb
        if limit is not None and pack.memory_gb > float(limit) and not arm.refused:
            pack.refused = (f"{pack.size} seeds x {arm.memory_gb:.2f} GB training memory + "
                            f"{pack.dataset_gb:.2f} GB dataset (once) = {pack.memory_gb:.2f} GB "
                            f"exceeds plan.max_memory_gb={float(limit):g} (lower pack, "
                            f"trainer.batch_size or the network, or raise plan.max_memory_gb)")


def packs_record(plan: Plan) -> dict:
    """What ``packs.json`` holds: the packs of this launch (run folders relative to the sweep
    folder; members in grid order, the first is the leader)."""
    def rel(path: Path) -> str:
        try:
            return path.relative_to(plan.sweep_dir).as_posix()
        except ValueError:
            return path.as_posix()

    return {"schema_version": PACKS_SCHEMA, "sweep": plan.sweep, "pack": plan.pack_size,
            "packs": [{"id": p.pack_id, "arm_id": p.arm_id, "size": p.size,
                       "leader": rel(p.leader.run_dir),
                       "memory_gb_estimate": _round(p.memory_gb, 3),
                       "members": [{"run_dir": rel(j.run_dir), "seed": j.seed,
                                    "overrides": list(j.overrides)} for j in p.jobs]}
                      for p in plan.packs]}


def write_packs(plan: Plan, path: Path | None = None) -> Path | None:
    """``packs.json`` in the sweep folder (atomic) when ``pack > 1``; with ``pack = 1`` a stale
    one from an earlier launch is removed (jobs read it only when ``pack > 1``)."""
    path = path or plan.sweep_dir / PACKS_JSON
    if plan.pack_size <= 1:
        path.unlink(missing_ok=True)
        return None
    records.atomic_write_text(path, json.dumps(packs_record(plan), indent=1) + "\n")
    return path


def read_packs(sweep_dir: Path) -> dict | None:
    loaded = records.read_json(Path(sweep_dir) / PACKS_JSON)
    return loaded.data if loaded.ok and isinstance(loaded.data, dict) else None


def find_pack(sweep_dir: Path, run_dir: Path) -> tuple[dict, int] | None:
    """(the pack entry of ``packs.json``, this run's index in it) for a run folder, or None."""
    data = read_packs(sweep_dir)
    if not data:
        return None
    sweep_dir, run_dir = Path(sweep_dir).absolute(), Path(run_dir).absolute()
    for pack in data.get("packs") or []:
        for i, member in enumerate(pack.get("members") or []):
            if (sweep_dir / member["run_dir"]).absolute() == run_dir:
                return pack, i
    return None


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


def single_run_refusals(job_cfg: DictConfig) -> list[str]:
    """The sweep preflight's checks for one run (no -m): the network must build, its memory
    estimate must fit ``plan.max_memory_gb``, the requested accelerator must exist."""
    plain = OmegaConf.to_container(job_cfg, resolve=True, enum_to_str=True)
    assert isinstance(plain, dict)
    arm = PlannedArm(arm_id=identity.arm_id(job_cfg), label=identity.arm_label(job_cfg), fields={},
              cfg=plain)
    _describe(arm, dict(plain.get("plan") or {}))
    found = [arm.refused] if arm.refused else []
    device = device_problem(plain)
    if device:
        found.append(device)
    return found


def _jobs_text(indices: list[int], job_overrides: list[list[str]]) -> str:
    first = f"job #{indices[0]} [{' '.join(job_overrides[indices[0]])}]"
    return first if len(indices) == 1 else f"{first} and {len(indices) - 1} more like it"


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def _check_duplicates(jobs: list[PlannedJob]) -> None:
    """Two grid points composing the same arm and seed would share (and clobber) one folder."""
    seen: dict[Path, PlannedJob] = {}
    for job in jobs:
        other = seen.get(job.run_dir)
        if other is not None:
            raise PlanError(
                f"jobs #{other.index} [{' '.join(other.overrides)}] and #{job.index} "
                f"[{' '.join(job.overrides)}] compose the same config (arm {job.arm_id}, seed "
                f"{job.seed}) and would write the same folder; remove the duplicate grid value")
        seen[job.run_dir] = job


# --- per-arm size and time -----------------------------------------------------------------------
def describe_config(cfg: Mapping[str, Any]) -> dict:
    """``ptychostab.models.describe`` for a plain resolved config (no weights allocated)."""
    from ptychostab.models import describe  # lazy: the dry run must work before models exist

    arch = dict(cfg["arch"])
    data = cfg["data"]
    return describe({**arch, "N": data["N"], "in_channels": int(data.get("gridsize", 1)) ** 2},
                    batch_size=int(cfg["trainer"]["batch_size"]))


def _describe(arm: PlannedArm, settings: Mapping[str, Any]) -> None:
    try:
        info = describe_config(arm.cfg)
    except ImportError as err:
        arm.describe_note = f"no model description ({err})"
        return
    except Exception as err:  # the models package refuses this network
        arm.refused = f"cannot be built: {_one_line(err)}"
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


def _model_epoch_s(arm: PlannedArm, settings: Mapping[str, Any]) -> float | None:
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


def _estimate(plan: Plan) -> None:
    measured: dict[str, float] = {}
    for arm_id in plan.arms:
        durations = [d for j in plan.jobs if j.arm_id == arm_id
                     for d in _history_epochs(j.run_dir)]
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
            arm.epoch_s = _model_epoch_s(arm, plan.settings)
            arm.epoch_s_source = "model" if arm.epoch_s is not None else None
    for job in plan.jobs:
        arm = plan.arms[job.arm_id]
        if job.status != TODO:
            job.est_minutes = (job.wall_s or 0.0) / 60
        elif arm.epoch_s is not None:
            left = max(int(arm.cfg["trainer"]["max_epochs"]) - job.epochs_done, 0)
            job.est_minutes = left * arm.epoch_s / 60


# --- output --------------------------------------------------------------------------------------
def _arm_extra_columns(plan: Plan) -> list[str]:
    skip = {"label", "arch", "clip", "clip_value", "depth"}
    cols: list[str] = []
    for arm in plan.arms.values():
        for key in arm.fields:
            if key not in skip and key not in cols:
                cols.append(key)
    return cols


def rows(plan: Plan) -> list[dict]:
    extra = _arm_extra_columns(plan)
    pack_by_job = {j.index: p.pack_id for p in plan.packs for j in p.jobs}
    out = []
    for job in plan.jobs:
        arm = plan.arms[job.arm_id]
        row = {"sweep": plan.sweep, "arm_id": job.arm_id, "arm_label": arm.label,
               "seed": job.seed, "overrides": " ".join(job.overrides),
               **{k: arm.fields.get(k) for k in ("arch", "clip", "clip_value", "depth")},
               **{k: arm.fields.get(k) for k in extra},
               "params_real": arm.params_real, "params_numel": arm.params_numel,
               "memory_gb_estimate": _round(arm.memory_gb, 3),
               "est_minutes": _round(job.est_minutes, 2), "status": job.status,
               "pack": pack_by_job.get(job.index)}
        out.append(row)
    return out


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)


def write_csv(plan: Plan, path: Path | None = None) -> Path:
    """``plan.csv`` in the sweep folder (atomic), one row per job."""
    path = path or plan.sweep_dir / PLAN_CSV
    table = rows(plan)
    columns = [*BASE_COLUMNS, *_arm_extra_columns(plan), *TAIL_COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    records.atomic_write_text(path, buf.getvalue())
    return path


def _fmt_int(v: int | None) -> str:
    if v is None:
        return "?"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else str(v)


def _fmt_min(m: float | None) -> str:
    if m is None:
        return "?"
    return f"{m / 60:.1f} h" if m >= 90 else f"{m:.1f} min"


def format_plan(plan: Plan) -> str:
    """The dry-run table: arms x seeds with done/failed/todo, size, memory, time."""
    c = plan.counts()
    lines = [f"sweep {plan.sweep!r} -> {plan.sweep_dir}",
             f"{len(plan.arms)} arm(s) x seeds = {len(plan.jobs)} run(s): "
             f"{c[DONE]} done, {c[FAILED]} failed, {c[TODO]} to do", ""]
    mark = {DONE: "ok", FAILED: "FAIL", TODO: "."}
    for arm in plan.arms.values():
        jobs = [j for j in plan.jobs if j.arm_id == arm.arm_id]
        per = {s: sum(j.status == s for j in jobs) for s in (DONE, FAILED, TODO)}
        size = (f"params {_fmt_int(arm.params_real)} real ({_fmt_int(arm.params_numel)} numel), "
                f"memory ~{arm.memory_gb:.2f} GB" if arm.memory_gb is not None
                else f"params {_fmt_int(arm.params_real)}; {arm.describe_note or 'no estimate'}")
        epoch = (f"{arm.epoch_s:.1f} s/epoch ({arm.epoch_s_source})" if arm.epoch_s is not None
                 else "time: no estimate")
        todo_min = sum(j.est_minutes or 0 for j in jobs if j.status == TODO)
        lines.append(f"{arm.arm_id}  {_fields_text(arm.fields)}")
        profile = arm.cfg.get("profile", "default")
        lines.append(f"    profile {profile}; {size}; {epoch}; to do: {_fmt_min(todo_min)}")
        lines.append("    seeds: " + " ".join(
            f"{j.seed}:{mark[j.status]}" + (f"({j.result_status}{', retry' if j.retried else ''})"
                                            if j.result_status not in (None, "ok") else "")
            for j in jobs))
        lines.append(f"    {per[DONE]} done, {per[FAILED]} failed, {per[TODO]} to do")
        if arm.refused:
            lines.append(f"    REFUSED: {arm.refused}")
    if plan.pack_size > 1:
        lines += ["", _packs_text(plan)]
    todo = [j for j in plan.jobs if j.status == TODO]
    total = sum(j.est_minutes or 0 for j in todo)
    unknown = sum(j.est_minutes is None for j in todo)
    par = max(int(plan.settings.get("parallel_jobs", 1) or 1), 1)
    lines += ["", f"to do: {len(todo)} run(s), ~{_fmt_min(total)} of compute"
              + (f" ({unknown} without estimate)" if unknown else "")
              + (f", ~{_fmt_min(total / min(par, max(len(todo), 1)))} wall at {par} in parallel"
                 if par > 1 and todo else "")]
    return "\n".join(lines)


def pack_jobs(plan: Plan) -> int:
    """Jobs a launch submits: one per pack plus one per unfinished seed in no pack."""
    packed = {j.index for p in plan.packs for j in p.jobs}
    return len(plan.packs) + sum(j.status == TODO and j.index not in packed for j in plan.jobs)


def _packs_text(plan: Plan) -> str:
    todo = sum(j.status == TODO for j in plan.jobs)
    lines = [f"packs (pack={plan.pack_size}): {todo} run(s) to do in {pack_jobs(plan)} job(s), "
             f"{len(plan.packs)} pack(s) of 2+ seeds (memory: K x training memory + dataset "
             f"once)"]
    for p in plan.packs:
        mem = (f"~{p.memory_gb:.2f} GB ({p.size} x {plan.arms[p.arm_id].memory_gb:.2f} + "
               f"{p.dataset_gb:.3f} data)" if p.memory_gb is not None else "memory: no estimate")
        lines.append(f"  {p.pack_id}: {p.size} seeds ({' '.join(map(str, p.seeds))}), "
                     f"leader seed={p.leader.seed}; {mem}")
        if p.refused:
            lines.append(f"    REFUSED: {p.refused}")
    return "\n".join(lines)


def _fields_text(fields: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items() if k != "label" and v is not None)
