"""hydra-submitit-launcher, made sweep-safe for ptychostab.

Three changes to the stock ``submitit_local`` / ``submitit_slurm`` launchers (1.2.0), nothing
else (the third: with ``pack > 1`` only pack leaders are submitted, one job per pack, and a
pack job the scheduler killed is recorded for every member):

1. Runs whose ``result.json`` is final (ok or a failure kind) are not submitted again: the
   preflight (ptychostab.launch.preflight) has already composed every job and read its status.
   A rerun of a finished sweep submits nothing; after one result is deleted, one job.
2. The launcher waits for *every* job. Stock ``launch`` returns ``[j.results()[0] for j in
   jobs]``, which raises at the first job SLURM killed (scancel, time limit without requeue,
   node failure, OOM kill) while the others still run, so the sweep "fails" half-way and
   ``on_multirun_end`` never runs. Here a killed job that had started gets an incomplete
   ``result.json`` (``timeout``, ``preempted`` or ``oom``, from the SLURM state; a rerun
   resumes it from ``last.ckpt``), a job killed before it started stays ``missing`` (plan.csv
   lists it), and the sweep completes with exit status 0. A job whose *code* raised (a bug,
   or ``strict=true``) is still reported as a failure, after all the others have ended.

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


@dataclass
class PtychoLocalQueueConf(LocalQueueConf):
    _target_: str = "hydra_plugins.ptychostab_launcher.launcher.PtychoLocalLauncher"


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


class _SweepSafeMixin:
    """``launch`` of :class:`BaseSubmititLauncher` with skip-finished and wait-for-all."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit  # lazy, as the stock plugin: keeps Hydra's plugin scan fast

        from ptychostab.launch import preflight  # the preflight's plan of this sweep

        assert self.config is not None  # type: ignore[attr-defined]
        plan = preflight.current_plan()
        final = plan.final_jobs() if plan is not None else {}
        # pack > 1: one job per pack, submitted for its leader (its first member, which trains
        # every member); the other members are not submitted.
        packed = {tuple(j.overrides): p for p in (plan.packs if plan is not None else [])
                  for j in p.jobs[1:]}
        todo = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)
                if tuple(o) not in final and tuple(o) not in packed]
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
        if todo:
            executor = self._executor(submitit)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))  # type: ignore[attr-defined]
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:  # type: ignore[attr-defined]  (as stock)
                os.chmod(sweep_dir, int(str(self.config.hydra.sweep.mode), 8))  # type: ignore
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")  # type: ignore
            from hydra.core.singleton import Singleton
            from hydra.core.utils import filter_overrides

            params = []
            for idx, overrides in todo:
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                params.append((overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                               Singleton.get_state()))
            jobs = executor.map_array(self, *zip(*params, strict=True))
            ids = ", ".join(sorted({str(j.job_id).split("_")[0] for j in jobs}))
            log.info(f"Submitted {len(jobs)} job(s) ({ids}); waiting for all of them")
            for (idx, overrides), job in zip(todo, jobs, strict=True):
                returns[idx] = self._wait(job, overrides, plan)
        return [returns[initial_job_idx + i] for i in range(len(job_overrides))]

    def _executor(self, submitit: Any) -> Any:
        # Same executor construction as BaseSubmititLauncher.launch (hydra-submitit 1.2.0).
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        init_keys = {"max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}  # type: ignore[attr-defined]
        init.update({f"{self._EXECUTOR}_{k}": v  # type: ignore[attr-defined]
                     for k, v in self.params.items() if k in init_keys})  # type: ignore
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)  # type: ignore
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            (k if k in base else f"{self._EXECUTOR}_{k}"): v  # type: ignore[attr-defined]
            for k, v in self.params.items()  # type: ignore[attr-defined]
            if k not in init_keys | {"submitit_folder"}})
        return executor

    def _wait(self, job: Any, overrides: List[str], plan: Any) -> JobReturn:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        from ptychostab.launch import killed_jobs

        try:
            return job.results()[0]
        except FailedJobError as err:  # the job's own code raised: a bug or strict=true
            log.error(f"job {job.job_id} ({' '.join(overrides)}) raised:\n{err}")
            ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
            ret.return_value = err
            return ret
        except UncompletedJobError as err:  # killed by the scheduler (or by hand)
            state = _state(job)
            pack = plan.pack_of(overrides) if plan is not None else None
            status = killed_jobs.record_killed(plan, overrides, state=state,
                                          job_id=str(job.job_id), message=str(err))
            for member in (pack.jobs[1:] if pack is not None else []):  # the whole pack died
                got = killed_jobs.record_killed(plan, member.overrides, state=state,
                                           job_id=str(job.job_id), message=str(err))
                log.warning(f"pack {pack.pack_id}: seed={member.seed} ended with its pack's job "
                            f"(state {state}): {got}")
            if status == "unknown":  # no plan (another sweeper) or a job it does not list
                log.error(f"job {job.job_id} ({' '.join(overrides)}) was killed (state {state}) "
                          f"and left no result; no plan to record it in")
                ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
                ret.return_value = JobKilled(
                    f"job {job.job_id} ({' '.join(overrides)}) was killed by the scheduler "
                    f"(state {state}) without a result: {err}")
                return ret
            log.warning(f"job {job.job_id} ({' '.join(overrides)}) ended without a result "
                        f"(state {state}): recorded as {status}")
            return _skipped(overrides, f"killed, recorded as {status}")


def _state(job: Any) -> str:
    try:
        return str(job.watcher.get_state(job.job_id, mode="force"))
    except Exception:  # sacct missing or slow: the state is only informative
        return "UNKNOWN"


class PtychoSlurmLauncher(_SweepSafeMixin, BaseSubmititLauncher):
    _EXECUTOR = "slurm"


class PtychoLocalLauncher(_SweepSafeMixin, BaseSubmititLauncher):
    _EXECUTOR = "local"
