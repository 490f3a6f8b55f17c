"""Hydra callback of every sweep (``hydra.callbacks.preflight`` in conf/train.yaml).

``on_multirun_start`` runs in the launcher process before the sweeper launches anything:

1. expand the grid and compose + validate every job (:func:`ptychostab.launch.plan.build`);
2. refuse arms that cannot be built or exceed ``plan.max_memory_gb``;
3. take the sweep lock (a second sweep on the same folder is refused);
4. with a submitit launcher: find the runs that jobs of an earlier launch still train or will
   train (:func:`ptychostab.launch.job_wait.find_alive`: their SLURM job, recorded in
   ``submitted.json``, still queued or running; their local process alive; a fresh
   ``run.lock``): the launcher waits for them and does not submit them again, and the packs
   of such jobs are kept as they were;
5. write ``plan.csv`` (and, with ``pack > 1``, ``packs.json``: the unfinished seeds of each
   arm grouped into packs of up to ``pack``, :func:`ptychostab.launch.plan.group_packs`) and
   log the plan.

``on_run_start`` (single runs, no ``-m``) takes the same lock shared, before Hydra creates the
run folder: single runs coexist, but not with a sweep of the same folder.

A refusal exits the process (status 1) with the reason: Hydra turns an ``Exception`` raised in
a callback into a warning and carries on, so the refusal is a ``SystemExit``.

The plan stays in this process (module state, never on the callback object: Hydra pickles its
callbacks into every submitit job) for the launchers in ``hydra_plugins.ptychostab_launcher``,
which skip finished runs and record runs the scheduler killed
(:func:`ptychostab.launch.killed_jobs.record_killed`).

``on_job_end`` (in the job's process) is a safety net: a job whose task raised anyway and left
no final ``result.json`` gets an ``exception`` record, so the aggregator sees it.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Any, Sequence

from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ptychostab import config as cfgmod
from ptychostab import identity
from ptychostab.analysis import sweepdir
from ptychostab.launch import grid, job_wait, killed_jobs, packs
from ptychostab.launch import plan as planmod
from ptychostab.launch.sweep_lock import LOCK_NAME, SweepLock, SweepLocked
from ptychostab.runs import records
from ptychostab.runs.lock import LOCK, RunLocked, read_lock, stale_reason

log = logging.getLogger(__name__)

_STATE: dict[str, Any] = {"plan": None, "lock": None, "alive": {}}


class SweepRefused(SystemExit):
    """The preflight refuses to launch; the message says why (exit status 1)."""


def current_plan() -> planmod.Plan | None:
    return _STATE["plan"]


def current_alive() -> dict[Path, job_wait.Alive]:
    """``{run folder: Alive}``: the runs of this sweep that an earlier launch's job still
    trains or will train (step 4); the launcher waits for them instead of submitting them."""
    return _STATE.get("alive") or {}


def submitit_backend(config: DictConfig) -> str | None:
    """``slurm`` / ``local`` for ptychostab's submitit launchers, None for any other."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    return ("slurm" if target.endswith("PtychoSlurmLauncher")
            else "local" if target.endswith("PtychoLocalLauncher") else None)


def _refuse(problems: Sequence[str], what: str = "the config cannot run") -> None:
    if problems:
        raise SweepRefused(f"preflight: refusing to launch; {what}:\n  - "
                           + "\n  - ".join(problems) + "\nNothing was launched.")


def preflight(config: DictConfig) -> planmod.Plan | None:
    """Steps 1-4 above; returns the plan (None for sweepers other than the basic grid)."""
    _refuse(cfgmod.folder_problems(config, multirun=True) + cfgmod.launcher_problems(config)
            + cfgmod.pack_problems(config))
    lock_dir = Path(str(config.hydra.sweep.dir))
    pack = OmegaConf.select(config, "pack", default=1)
    if not grid.is_basic_sweeper(config) and isinstance(pack, int) and pack > 1:
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_")
        _refuse([f"pack={pack} with the sweeper {sweeper}"
                 f": packing groups the seeds of the grid, which only the basic grid sweeper "
                 f"expands before launching; use pack=1 with this sweeper"])
    if not grid.is_basic_sweeper(config):
        log.warning("not the basic grid sweeper: no plan, only the sweep lock")
        _take_lock(lock_dir, mode=_sweep_mode(config))
        return None
    try:
        plan = planmod.build(config, GlobalHydra.instance().config_loader())
    except planmod.PlanError as err:
        raise SweepRefused(f"preflight: {err}\nNothing was launched.") from None
    _refuse(plan.refusals(), "arm(s) that cannot run")
    _take_lock(plan.sweep_dir, mode=_sweep_mode(config))
    backend = submitit_backend(config)
    if backend is not None:
        # the queue first, the records after: a job that ended in between left its result
        _STATE["alive"] = alive = job_wait.find_alive(plan, backend=backend)
        finished = refresh_finished(plan, OmegaConf.select(config, "retry", default=None))
        if (alive or finished) and plan.pack_size > 1:
            keep_live_packs(plan, alive)
    for name, write in ((sweepdir.PLAN_CSV, planmod.write_csv),
                        (sweepdir.PACKS_JSON, packs.write_packs)):
        try:
            write(plan)
        except OSError as err:
            release()
            raise SweepRefused(f"preflight: cannot write {plan.sweep_dir / name}: "
                               f"{err.strerror or err} ({type(err).__name__}). Nothing was "
                               f"launched.") from None
    log.info("plan (%s):\n%s", plan.sweep_dir / sweepdir.PLAN_CSV, planmod.format_plan(plan))
    _STATE["plan"] = plan
    return plan


def _sweep_mode(config: DictConfig) -> int | None:
    """``hydra.sweep.mode`` (octal digits, e.g. ``+hydra.sweep.mode=775``), as submitit
    reads it."""
    mode = OmegaConf.select(config, "hydra.sweep.mode", default=None)
    return None if mode is None else int(str(mode), 8)


def _take_lock(sweep_dir: Path, *, shared: bool = False, mode: int | None = None) -> None:
    """The sweep lock, or a refusal: held by another sweep, or the folder cannot be prepared
    (an OSError: permission, read-only or full disk); never a warning and an unlocked sweep."""
    try:
        existed = sweep_dir.exists()
        _STATE["lock"] = SweepLock(sweep_dir).acquire(shared=shared)
        if mode is not None and not existed:
            os.chmod(sweep_dir, mode)
    except SweepLocked as err:
        raise SweepRefused(f"preflight: {err}\nNothing was launched.") from None
    except OSError as err:
        release()
        raise SweepRefused(f"preflight: cannot prepare the sweep folder {sweep_dir} (lock "
                           f"{LOCK_NAME}): {err.strerror or err} ({type(err).__name__}). "
                           f"Nothing was launched.") from None


def refresh_finished(plan: planmod.Plan, retry: Any = None) -> list[planmod.PlannedJob]:
    """Jobs planned as to-do whose run has a final result by now (the job of an earlier
    launch finished while this one was composing): marked done/failed, so that they are
    skipped; returns them."""
    retry = {str(s) for s in (retry or ())}
    found = []
    for job in plan.jobs:
        if job.status != planmod.TODO:
            continue
        loaded = records.read_json(job.run_dir / records.RESULT)
        status = loaded.data.get("status") if loaded.ok else None
        if records.is_final(status) and status not in retry:
            job.status = planmod.DONE if status == records.OK else planmod.FAILED
            job.result_status = status
            found.append(job)
    if found:
        log.info(f"{len(found)} run(s) finished since the plan was read (a job of an earlier "
                 f"launch): not launched again")
    return found


def keep_live_packs(plan: planmod.Plan, alive: dict[Path, Any]) -> None:
    """Packs of an earlier launch whose leader's job still runs or waits keep their members
    (as ``packs.json`` had them: a queued pack job reads it when it starts); the other
    unfinished runs, less the live ones, are grouped again."""
    old = packs.read_packs(plan.sweep_dir) or {}
    by_dir = {j.run_dir: j for j in plan.jobs}
    kept, used = [], set()
    for entry in old.get("packs") or []:
        members = [by_dir.get((plan.sweep_dir / str(m.get("run_dir"))).absolute())
                   for m in entry.get("members") or [] if isinstance(m, dict)]
        jobs = [j for j in members if j is not None and j.run_dir not in used]
        if not jobs or members[0] is None or members[0].run_dir not in alive:
            continue
        kept.append(packs.Pack(pack_id=str(entry.get("id")), arm_id=jobs[0].arm_id, jobs=jobs))
        used |= {j.run_dir for j in jobs}
    rest = [j for j in plan.jobs if j.run_dir not in used and j.run_dir not in alive]
    plan.packs = kept + packs.group_packs(rest, plan.pack_size)
    packs.size_packs(plan)


def release() -> None:
    lock = _STATE.get("lock")
    if lock is not None:
        lock.release()
    _STATE.update(plan=None, lock=None, alive={})


class SweepPreflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A single run (no -m) writes into <output_root>/<sweep>/: it shares the folder with
        # other single runs, not with a sweep. Checked before Hydra creates the run folder.
        # Same checks as a sweep's preflight, before any folder exists (Hydra makes the run
        # folder after this hook; the lock makes the sweep's).
        release()
        _refuse(cfgmod.folder_problems(config, multirun=False))
        job_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            cfgmod.validate(job_cfg)
        except cfgmod.ConfigError as err:
            raise SweepRefused(str(err)) from None
        _refuse(planmod.single_run_refusals(job_cfg))
        # the same run alive elsewhere: refused before Hydra writes into its folder
        lock_path = identity.run_dir(job_cfg) / LOCK
        holder = read_lock(lock_path)
        if holder is not None and stale_reason(holder) is None:
            raise SweepRefused(f"{RunLocked(lock_path, holder)}\nNothing was launched.")
        _take_lock(identity.sweep_dir(config), shared=True)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        release()  # a previous sweep in this process (tests) must not leak its plan
        preflight(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        plan = current_plan()
        if plan is not None:
            found = {s: 0 for s in ("ok", "failed", "incomplete", "none")}
            for job in plan.jobs:
                status = planmod._status(job.run_dir)[1]
                key = ("ok" if status == records.OK else "failed" if records.is_final(status)
                       else "none" if status is None else "incomplete")
                found[key] += 1
            log.info(f"sweep {plan.sweep!r} ended: {found['ok']} ok, {found['failed']} failed, "
                     f"{found['incomplete']} incomplete, {found['none']} without result "
                     f"(aggregate: python -m ptychostab.cli.aggregate {plan.sweep_dir})")
        release()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        try:
            run_dir = Path(str(config.hydra.runtime.output_dir))
            err = job_return._return_value
            if isinstance(err, RunLocked):  # the folder belongs to a live process: touch nothing
                return
            loaded = records.read_json(run_dir / records.RESULT)
            if loaded.ok:  # the job recorded its own ending; never replaced from outside
                return
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            records.atomic_write_text(run_dir / records.TRACEBACK, text)
            killed_jobs.write_result(run_dir, config, "exception", f"{type(err).__name__}: {err}",
                          recorded_by="hydra on_job_end")
        except Exception as err:  # never mask the job's own error
            log.warning(f"on_job_end could not record the failure: {err}")
