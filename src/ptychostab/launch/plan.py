"""The plan of a sweep, before anything runs: shared by the dry run and the sweep preflight.

:func:`build` expands the grid (:mod:`.grid`), composes and validates every job, names its arm
and run folder, reads its status from ``result.json``, describes each arm and estimates its time
(:mod:`.estimate`), and groups packs (:mod:`.packs`). :meth:`Plan.refusals` lists the arms and
packs that cannot run. :func:`write_csv` writes ``plan.csv``; :func:`format_plan` is the dry
run's text.
"""

from __future__ import annotations

import csv
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from ptychostab import config as cfgmod
from ptychostab import identity
from ptychostab.analysis.sweepdir import PLAN_CSV
from ptychostab.launch.estimate import describe_arm, device_problem, estimate_times, time_notes
from ptychostab.launch.grid import (  # noqa: F401  (DONE/FAILED/TODO: the plan's API)
    DONE,
    FAILED,
    TODO,
    PlanError,
    compose_jobs,
    expand,
    jobs_text,
    one_line,
    round_or_none,
    sweeper_params,
)
from ptychostab.launch.packs import Pack, group_packs, packs_text, size_packs
from ptychostab.runs import records

BASE_COLUMNS = ("sweep", "arm_id", "arm_label", "seed", "overrides", "arch", "clip",
                "clip_value", "depth")
TAIL_COLUMNS = ("params_real", "params_numel", "memory_gb_estimate", "est_minutes", "status",
                "pack")


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
    epoch_s_source: str | None = None  # measured | calibrated | scaled | model
    epoch_s_detail: str | None = None  # e.g. "calibrated on <device>, N steps, <date>"


@dataclass
class Plan:
    sweep: str
    sweep_dir: Path
    jobs: list[PlannedJob]
    arms: "OrderedDict[str, PlannedArm]"
    settings: dict  # the `plan` node
    pack_size: int = 1  # the `pack` key (seeds per job)
    remote: bool = False  # jobs run elsewhere (launcher=slurm): no local time figure is theirs
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
            compose_jobs(master, config_loader, job_overrides)):
        try:
            if isinstance(with_hydra, Exception):
                raise with_hydra
            job_cfg = OmegaConf.masked_copy(with_hydra, [k for k in with_hydra if k != "hydra"])
            cfgmod.validate(job_cfg)
            aid = identity.arm_id(job_cfg)
            run_dir = _job_dir(with_hydra)
            pack_values.add(job_cfg.pack)
        except Exception as err:  # composition, interpolation or validation: report them all
            errors.setdefault(one_line(err), []).append(index)
            continue
        status, raw, wall = _status(run_dir, retry)
        job = PlannedJob(
            index=index, overrides=list(overrides), seed=_seed_of(job_cfg), arm_id=aid,
            run_dir=run_dir, status=status, result_status=raw, wall_s=wall,
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
        shown = [f"{jobs_text(idx, job_overrides)}: {msg}" for msg, idx in errors.items()]
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
            describe_arm(arm, plan.settings)
    if here:
        for arm in arms.values():
            arm.refused = arm.refused or device_problem(arm.cfg)
    plan.packs = group_packs(plan.jobs, plan.pack_size)
    size_packs(plan)
    plan.remote = not here
    estimate_times(plan)  # reads the calibration cache; never times
    return plan


def single_run_refusals(job_cfg: DictConfig) -> list[str]:
    """The sweep preflight's checks for one run (no -m): the network must build, its memory
    estimate must fit ``plan.max_memory_gb``, the requested accelerator must exist."""
    plain = OmegaConf.to_container(job_cfg, resolve=True, enum_to_str=True)
    assert isinstance(plain, dict)
    arm = PlannedArm(arm_id=identity.arm_id(job_cfg), label=identity.arm_label(job_cfg),
                     fields={}, cfg=plain)
    describe_arm(arm, dict(plain.get("plan") or {}))
    found = [arm.refused] if arm.refused else []
    device = device_problem(plain)
    if device:
        found.append(device)
    return found


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
               "memory_gb_estimate": round_or_none(arm.memory_gb, 3),
               "est_minutes": round_or_none(job.est_minutes, 2), "status": job.status,
               "pack": pack_by_job.get(job.index)}
        out.append(row)
    return out


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
        epoch = (f"{arm.epoch_s:.1f} s/epoch ({arm.epoch_s_detail or arm.epoch_s_source})"
                 if arm.epoch_s is not None else "time: no estimate")
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
        lines += ["", packs_text(plan)]
    todo = [j for j in plan.jobs if j.status == TODO]
    total = sum(j.est_minutes or 0 for j in todo)
    unknown = sum(j.est_minutes is None for j in todo)
    par = max(int(plan.settings.get("parallel_jobs", 1) or 1), 1)
    lines += ["", f"to do: {len(todo)} run(s), ~{_fmt_min(total)} of compute"
              + (f" ({unknown} without estimate)" if unknown else "")
              + (f", ~{_fmt_min(total / min(par, max(len(todo), 1)))} wall at {par} in parallel"
                 if par > 1 and todo else "")]
    lines += time_notes(plan)
    lines += power_lines(plan)
    return "\n".join(lines)


def power_lines(plan: Plan) -> list[str]:
    """What the decision's gates can settle at this sweep's seeds per arm (the fewest of any
    arm), by the study's rule (:func:`ptychostab.analysis.power.study_power`); nothing for a
    sweep declared outside the study or without seeds."""
    from ptychostab.analysis import power
    from ptychostab.analysis.rule import load_rule

    seeds = min((len(a.seeds) for a in plan.arms.values()), default=0)
    if seeds < 1 or any(a.cfg.get("outside_study") is True for a in plan.arms.values()):
        return []
    rule = load_rule()
    p = power.study_power(seeds, rule.evidence_level, rule.premise_failure_rate,
                          rule.min_effect.failure_rate, rule.min_effect.loss)
    return ["", f"decision rule conf/decision/{rule.name}.yaml, {seeds} seeds per arm "
                "(experiments/README.md, \"Seeds\"):", *p.lines()]


def _fields_text(fields: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items() if k != "label" and v is not None)
