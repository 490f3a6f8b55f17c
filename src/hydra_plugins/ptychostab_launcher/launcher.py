"""hydra-submitit-launcher, made sweep-safe for ptychostab.

Changes to the stock ``submitit_local`` / ``submitit_slurm`` launchers (1.2.0):

1. Runs whose ``result.json`` is final (ok or a failure kind) are not submitted again: the
   preflight (ptychostab.launch.preflight) has already composed every job and read its status.
   A rerun of a finished sweep submits nothing; after one result is deleted, one job. With
   ``pack > 1`` only pack leaders are submitted, one job per pack, and a pack job the
   scheduler killed is recorded for every member.
2. Runs that a job of an earlier launch still trains or will train (its SLURM job, recorded
   at submission in ``<sweep>/submitted.json``, still in the queue; its local process alive;
   a fresh ``run.lock``: :func:`ptychostab.launch.job_wait.find_alive`) are not submitted
   again either: the launch waits for those jobs as its own.
3. The wait covers every job and always ends (:class:`ptychostab.launch.job_wait.Waiter`).
   Stock ``launch`` returns ``[j.results()[0] for j in jobs]``: it raises at the first job
   SLURM killed while the others still run, and waits forever for a job whose state reads
   UNKNOWN (an array task cancelled while pending has no accounting row). Here all jobs are
   polled together (one ``squeue`` + one ``sacct`` call, every ``cluster.poll_interval_s``);
   a job that ended without a result, or that SLURM no longer knows for
   ``cluster.lost_job_grace_s`` (failed queue calls do not count), is over: one that had
   started gets an incomplete ``result.json`` (``timeout``, ``preempted`` or ``infra``, from
   the SLURM state; a rerun resumes it from ``last.ckpt``), one that never started stays
   ``missing`` (plan.csv lists it), and the sweep completes with exit status 0 and a line
   saying what was killed or missing. ``submitit_local``: a job process gone without a result
   is over at once. A job whose *code* raised (a bug, or ``strict=true``) is still reported as
   a failure, after all the others have ended.
4. SIGINT/SIGTERM end the wait at once: the launcher says which jobs still run and how to
   resume, releases the sweep lock and exits (status 128 + the signal); the jobs go on.

Requeue on preemption/time-out is the stock mechanism: submitit's USR2 handler calls
``checkpoint()``, which resubmits the same Hydra job; ``run_job`` then resumes from
``last.ckpt`` in the same run folder (no timestamps in paths).
"""

# (no `from __future__ import annotations`: Hydra executes plugin modules before they are in
# sys.modules, and dataclasses then cannot resolve string annotations)

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger(__name__)


@dataclass
class PtychoSlurmQueueConf(SlurmQueueConf):
    """``hydra/launcher=ptychostab_slurm`` (what ``launcher=slurm`` selects). Every resource
    defaults to the ``cluster`` node (ptychostab.config.ClusterConfig). The interpolations sit
    here, in the launcher's own config, not in conf/launcher/slurm.yaml: a site launcher file
    (``hydra/launcher/<site>.yaml`` starting with ``defaults: [ptychostab_slurm]``, selected
    with ``hydra/launcher=<site>``) is merged on top of this node, so its partition, account,
    qos, timeout, ... win over ``cluster.*``, and what it leaves out still comes from
    ``cluster.*``."""

    _target_: str = "hydra_plugins.ptychostab_launcher.launcher.PtychoSlurmLauncher"
    partition: Optional[str] = "${job:cluster.partition}"  # type: ignore[assignment]
    account: Optional[str] = "${job:cluster.account}"  # type: ignore[assignment]
    qos: Optional[str] = "${job:cluster.qos}"  # type: ignore[assignment]
    constraint: Optional[str] = "${job:cluster.constraint}"  # type: ignore[assignment]
    comment: Optional[str] = "${job:cluster.comment}"  # type: ignore[assignment]
    exclude: Optional[str] = "${job:cluster.exclude}"  # type: ignore[assignment]
    gpus_per_node: Optional[int] = "${job:cluster.gpus_per_node}"  # type: ignore[assignment]
    cpus_per_task: Optional[int] = "${job:cluster.cpus_per_task}"  # type: ignore[assignment]
    tasks_per_node: int = "${job:cluster.tasks_per_node}"  # type: ignore[assignment]
    mem_gb: Optional[int] = "${job:cluster.mem_gb}"  # type: ignore[assignment]
    timeout_min: int = "${job:cluster.timeout_min}"  # type: ignore[assignment]
    signal_delay_s: int = "${job:cluster.signal_delay_s}"  # type: ignore[assignment]
    max_num_timeout: int = "${job:cluster.max_num_timeout}"  # type: ignore[assignment]
    array_parallelism: int = "${job:cluster.array_parallelism}"  # type: ignore[assignment]
    setup: Optional[List[str]] = "${job:cluster.setup}"  # type: ignore[assignment]
    additional_parameters: Dict[str, Any] = "${job:cluster.additional_parameters}"  # type: ignore
    # the wait (ptychostab.launch.job_wait), the launcher's own: not handed to submitit
    poll_interval_s: float = "${job:cluster.poll_interval_s}"  # type: ignore[assignment]
    lost_job_grace_s: float = "${job:cluster.lost_job_grace_s}"  # type: ignore[assignment]


@dataclass
class PtychoLocalQueueConf(LocalQueueConf):
    """``hydra/launcher=ptychostab_submitit_local``. Literal defaults (Hydra's conformance
    suite composes it without ptychostab's config); conf/launcher/submitit_local.yaml maps
    ``cluster.*`` onto it."""

    _target_: str = "hydra_plugins.ptychostab_launcher.launcher.PtychoLocalLauncher"
    poll_interval_s: float = 1.0  # a look at the job processes: cheap
    lost_job_grace_s: float = 300.0


ConfigStore.instance().store(group="hydra/launcher", name="ptychostab_slurm",
                             node=PtychoSlurmQueueConf(), provider="ptychostab")
ConfigStore.instance().store(group="hydra/launcher", name="ptychostab_submitit_local",
                             node=PtychoLocalQueueConf(), provider="ptychostab")


class JobKilled(RuntimeError):
    """A job the scheduler killed that could not be recorded (reported, never COMPLETED)."""


def _skipped(overrides: Sequence[str], status: str) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = f"skipped ({status})"
    return ret


def _packed(overrides: Sequence[str], pack: Any) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = f"packed into {pack.leader.run_dir.parent.name}/{pack.leader.run_dir.name}"
    return ret


class LauncherStopped(SystemExit):
    """SIGINT/SIGTERM ended the launcher's wait (exit status 128 + the signal number). The jobs
    go on; rerunning the same command waits for them and submits only the rest."""


class _SweepSafeMixin:
    """``launch`` of :class:`BaseSubmititLauncher` with skip-finished, recognise-running and a
    wait that always ends."""

    _EXECUTOR = "abstract"
    _SCHEDULER = "abstract"

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit  # lazy, as the stock plugin: keeps Hydra's plugin scan fast

        from ptychostab.launch import job_wait, preflight  # the preflight's plan of this sweep

        assert self.config is not None  # type: ignore[attr-defined]
        plan = preflight.current_plan()
        alive = preflight.current_alive()
        final = plan.final_jobs() if plan is not None else {}
        # pack > 1: one job per pack, submitted for its leader (its first member, which trains
        # every member); the other members are not submitted.
        packed = {tuple(j.overrides): p for p in (plan.packs if plan is not None else [])
                  for j in p.jobs[1:]}
        returns: dict[int, JobReturn] = {
            initial_job_idx + i: _skipped(o, final[tuple(o)])
            for i, o in enumerate(job_overrides) if tuple(o) in final}
        if returns:
            log.info(f"Skipping {len(returns)} run(s) with a final result.json "
                     f"(delete a run's result.json to train it again)")
        members = {initial_job_idx + i: _packed(o, packed[tuple(o)])
                   for i, o in enumerate(job_overrides) if tuple(o) in packed}
        if members:
            log.info(f"{len(members)} run(s) packed into their pack leader's job (pack="
                     f"{plan.pack_size}; packs.json): not submitted on their own")
            returns.update(members)
        rest = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)
                if tuple(o) not in final and tuple(o) not in packed]
        adopted = []
        for idx, overrides in rest:
            planned = plan.job_for(overrides) if plan is not None else None
            if planned is not None and planned.run_dir in alive:
                adopted.append((idx, overrides, alive[planned.run_dir]))
        taken = {idx for idx, _, _ in adopted}
        todo = [(idx, o) for idx, o in rest if idx not in taken]
        summary = _Summary()
        with job_wait.StopSignals() as stop:
            tracked = [self._adopt(idx, o, a) for idx, o, a in adopted]
            if adopted:
                log.info(f"Recognised {len(adopted)} run(s) of an earlier launch still queued "
                         f"or running: waiting for them as this launch's own, not submitting "
                         f"them again:\n\t" + "\n\t".join(
                             f"#{idx} {_name(o, plan)}: {a.describe()}"
                             for idx, o, a in adopted))
            executor = None
            if todo:
                executor = self._executor(submitit)
                tracked += self._submit(executor, todo, plan)
            reader = (getattr(executor, "queue_reader", None)  # test doubles bring their own
                      or job_wait.reader_for(self._EXECUTOR))

            def finish(t: Any) -> None:
                returns[t.index] = self._finish(t, plan, summary)

            waiter = job_wait.Waiter(
                tracked, reader, grace_s=self._setting("lost_job_grace_s", 300.0),
                poll_s=self._setting("poll_interval_s", 30.0), stop=stop, on_finish=finish)
            if not waiter.run():
                self._stopped(waiter, stop.signum, plan)
        if tracked:
            log.info(summary.line(len(tracked)))
        return [returns[initial_job_idx + i] for i in range(len(job_overrides))]

    def _setting(self, key: str, default: float) -> float:
        value = self.params.get(key)  # type: ignore[attr-defined]
        return float(default if value is None else value)

    def _submit(self, executor: Any, todo: List[Any], plan: Any) -> List[Any]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides

        from ptychostab.launch import job_wait

        sweep_dir = Path(str(self.config.hydra.sweep.dir))  # type: ignore[attr-defined]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # type: ignore[attr-defined]  (as stock)
            os.chmod(sweep_dir, int(str(self.config.hydra.sweep.mode), 8))  # type: ignore
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        params = []
        for idx, overrides in todo:
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            params.append((overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                           Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*params, strict=True))
        self._record_submitted(sweep_dir, todo, jobs, plan)
        ids = ", ".join(sorted({str(j.job_id).split("_")[0] for j in jobs}))
        log.info(f"Submitted {len(jobs)} job(s) ({ids}); waiting for all of them")
        return [job_wait.Tracked(index=idx, overrides=list(o), job_id=str(job.job_id), job=job)
                for (idx, o), job in zip(todo, jobs, strict=True)]

    def _record_submitted(self, sweep_dir: Path, todo: List[Any], jobs: List[Any],
                          plan: Any) -> None:
        """``submitted.json``: each run folder (a pack: every member) and its job, so that a
        rerun recognises the jobs that still run. Never fails the launch."""
        from ptychostab.launch import submitted
        from ptychostab.runs.lock import process_start

        if plan is None:
            return
        entries, pids = [], {}
        for (_, overrides), job in zip(todo, jobs, strict=True):
            planned = plan.job_for(overrides)
            if planned is None:
                continue
            pack = plan.pack_of(overrides)
            for member in (pack.jobs if pack is not None else [planned]):
                entries.append((member.run_dir, planned.run_dir, str(job.job_id)))
            process = getattr(job, "_process", None)
            if self._EXECUTOR == "local" and process is not None:
                pids[str(job.job_id)] = (process.pid, process_start(process.pid))
        try:
            path = submitted.record(sweep_dir, plan.sweep, entries, backend=self._EXECUTOR,
                                    pids=pids)
            log.info(f"job ids recorded in {path}")
        except OSError as err:
            log.warning(f"cannot record the job ids in {sweep_dir}: {err} (a rerun while they "
                        f"run recognises them by their run.lock only)")

    def _adopt(self, idx: int, overrides: List[str], alive: Any) -> Any:
        from ptychostab.launch import job_wait

        job = None
        if alive.check is None and self._EXECUTOR == "slurm":
            from submitit.slurm.slurm import SlurmJob

            folder = self.params.get("submitit_folder")  # type: ignore[attr-defined]
            job = SlurmJob(folder=folder, job_id=alive.job_id) if folder else None
        return job_wait.Tracked(index=idx, overrides=list(overrides), job_id=alive.job_id,
                                job=job, alive=alive.check, adopted=True, state=alive.state,
                                reason=alive.reason)

    def _finish(self, t: Any, plan: Any, summary: "_Summary") -> JobReturn:
        """The JobReturn of a finished job: its own result, or what the launcher recorded."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        overrides = list(t.overrides)
        message = ""
        if t.done:
            try:
                ret = t.job.results()[0]
                summary.add("returned", overrides, plan)
                return ret
            except FailedJobError as err:  # the job's own code raised: a bug or strict=true
                log.error(f"job {t.job_id} ({' '.join(overrides)}) raised:\n{err}")
                summary.add("raised", overrides, plan)
                ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
                ret.return_value = err
                return ret
            except UncompletedJobError as err:  # a result file that cannot be read
                t.over = t.state or "UNKNOWN"
                message = str(err)
        return self._record_over(t, plan, summary, message)

    def _record_over(self, t: Any, plan: Any, summary: "_Summary", message: str) -> JobReturn:
        """Record a job that is over without a result (killed, lost, or never started)."""
        from ptychostab.launch import killed_jobs
        from ptychostab.runs import records

        overrides = list(t.overrides)
        state = str(t.over or "UNKNOWN")
        planned = plan.job_for(overrides) if plan is not None else None
        pack = plan.pack_of(overrides) if plan is not None else None
        runs = pack.jobs if pack is not None else ([planned] if planned is not None else [])
        if t.alive is not None and runs and all(
                (j.run_dir / records.RESULT).exists() and not (j.run_dir / "run.lock").exists()
                for j in runs):
            summary.add("returned", overrides, plan)  # an adopted run that recorded its own ending
            return _skipped(overrides, "ended with its own record (an earlier launch's job)")
        if t.lost:
            message = (f"It was in neither squeue nor sacct (or UNKNOWN) for "
                       f"{t.unknown_s:.0f} s (cluster.lost_job_grace_s). {message}").strip()
        status = killed_jobs.record_killed(plan, overrides, state=state, job_id=t.job_id,
                                           message=message, scheduler=self._SCHEDULER)
        for member in (pack.jobs[1:] if pack is not None else []):  # the whole pack died
            got = killed_jobs.record_killed(plan, member.overrides, state=state,
                                            job_id=t.job_id, message=message,
                                            scheduler=self._SCHEDULER)
            summary.add(got, member.overrides, plan)
            log.warning(f"pack {pack.pack_id}: seed={member.seed} ended with its pack's job "
                        f"(state {state}): {got}")
        if status == "unknown":  # no plan (another sweeper) or a job it does not list
            log.error(f"job {t.job_id} ({' '.join(overrides)}) was killed (state {state}) "
                      f"and left no result; no plan to record it in")
            summary.add("unrecorded", overrides, plan)
            ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
            ret.return_value = JobKilled(
                f"job {t.job_id} ({' '.join(overrides)}) was killed by the scheduler "
                f"(state {state}) without a result: {message}")
            return ret
        summary.add(status, overrides, plan)
        why = (f"unknown to the scheduler for {t.unknown_s:.0f} s" if t.lost
               else f"state {state}")
        log.warning(f"job {t.job_id} ({_name(overrides, plan)}) ended without a result "
                    f"({why}): recorded as {status}")
        return _skipped(overrides, f"killed, recorded as {status}")

    def _stopped(self, waiter: Any, signum: Optional[int], plan: Any) -> None:
        """Say what still runs and how to resume, release the sweep lock, exit."""
        import signal as _signal

        from ptychostab.analysis.sweepdir import SUBMITTED_JSON
        from ptychostab.launch import preflight

        name = _signal.Signals(signum).name if signum else "a signal"
        pending = waiter.pending()
        shown = ", ".join(t.describe() for t in pending[:20]) + (
            f", ... {len(pending) - 20} more" if len(pending) > 20 else "")
        if self._EXECUTOR == "slurm":
            cancel = "scancel " + " ".join(sorted({t.job_id.split("_")[0] for t in pending}))
        else:
            cancel = "kill their processes"
        log.warning(
            f"launcher stopped by {name}: {len(pending)} job(s) of this sweep still queued or "
            f"running ({self._SCHEDULER}: {shown or 'none'}); they go on and record their own "
            f"results" + (f" (job ids in {plan.sweep_dir / SUBMITTED_JSON})" if plan else "")
            + ". To resume, run the same command again: it waits for them and submits only "
            f"the rest. To stop them instead: {cancel}. Sweep lock released.")
        preflight.release()
        raise LauncherStopped(128 + int(signum or 0))

    def _executor(self, submitit: Any) -> Any:
        # Same executor construction as BaseSubmititLauncher.launch (hydra-submitit 1.2.0).
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        init_keys = {"max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}  # type: ignore[attr-defined]
        init.update({f"{self._EXECUTOR}_{k}": v
                     for k, v in self.params.items() if k in init_keys})  # type: ignore
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            (k if k in base else f"{self._EXECUTOR}_{k}"): v
            for k, v in self.params.items()  # type: ignore[attr-defined]
            if k not in init_keys | {"submitit_folder"} | WAIT_KEYS})
        return executor


def _name(overrides: Sequence[str], plan: Any) -> str:
    """A job as the logs name it: its run folder in the sweep (``<arm_id>/seed=<k>``) when
    the plan knows it, else its overrides."""
    planned = plan.job_for(overrides) if plan is not None else None
    if planned is None:
        return " ".join(overrides)
    return f"{planned.run_dir.parent.name}/{planned.run_dir.name}"


#: the launcher's own settings (the wait), never handed to submitit's executor
WAIT_KEYS = frozenset(("lost_job_grace_s", "poll_interval_s"))


class _Summary:
    """What the jobs of a launch ended as, for the closing line."""

    def __init__(self) -> None:
        self.by: Dict[str, List[str]] = {}

    def add(self, what: str, overrides: Sequence[str], plan: Any = None) -> None:
        self.by.setdefault(what, []).append(_name(overrides, plan))

    def line(self, n_jobs: int) -> str:
        """``All 12 job(s) of this launch are over: 9 returned; 2 killed ...; 1 never
        started (missing ...)``, then one line per killed or missing run."""
        done = [f"{len(self.by[k])} {k}" for k in ("returned", "raised") if k in self.by]
        killed = {k: v for k, v in self.by.items()
                  if k not in ("returned", "raised", "missing", "unrecorded")}
        n_killed = sum(len(v) for v in killed.values())
        text = (f"All {n_jobs} job(s) of this launch are over: {', '.join(done) or '0 returned'}"
                f"; {n_killed} killed without a result"
                + (f" (recorded as {', '.join(f'{k} {len(v)}' for k, v in killed.items())}: "
                   f"a rerun resumes them)" if n_killed else "")
                + f"; {len(self.by.get('missing', []))} never started (missing: a rerun "
                f"submits them)")
        if self.by.get("unrecorded"):
            text += f"; {len(self.by['unrecorded'])} killed and not recorded (no plan)"
        shown = [f"{k}: {o}" for k in ("missing", *killed) for o in self.by.get(k, [])]
        return text + "".join(f"\n\t{s}" for s in shown[:30]) + (
            f"\n\t... {len(shown) - 30} more" if len(shown) > 30 else "")


class PtychoSlurmLauncher(_SweepSafeMixin, BaseSubmititLauncher):
    _EXECUTOR = "slurm"
    _SCHEDULER = "SLURM"


class PtychoLocalLauncher(_SweepSafeMixin, BaseSubmititLauncher):
    _EXECUTOR = "local"
    _SCHEDULER = "submitit_local"
