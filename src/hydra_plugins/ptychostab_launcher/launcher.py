"""hydra-submitit-launcher, made sweep-safe for ptychostab.

Two changes to the stock ``submitit_local`` / ``submitit_slurm`` launchers (1.2.0), nothing else:

1. Runs whose ``result.json`` is final (ok or a failure kind) are not submitted again: the
   preflight (ptychostab.sweep.callbacks) has already composed every job and read its status.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger(__name__)


@dataclass
class PtychoSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.ptychostab_launcher.launcher.PtychoSlurmLauncher"
    # An empty list, not None: OmegaConf resolves an interpolation merged into a None container
    # against the file being merged, so `setup: ${cluster.setup}` would fail to compose.
    setup: Optional[List[str]] = field(default_factory=list)


@dataclass
class PtychoLocalQueueConf(LocalQueueConf):
    _target_: str = "hydra_plugins.ptychostab_launcher.launcher.PtychoLocalLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="ptychostab_slurm",
                             node=PtychoSlurmQueueConf(), provider="ptychostab")
ConfigStore.instance().store(group="hydra/launcher", name="ptychostab_submitit_local",
                             node=PtychoLocalQueueConf(), provider="ptychostab")


def _skipped(overrides: Sequence[str], status: str) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = f"skipped ({status})"
    return ret


class _SweepSafeMixin:
    """``launch`` of :class:`BaseSubmititLauncher` with skip-finished and wait-for-all."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit  # lazy, as the stock plugin: keeps Hydra's plugin scan fast

        from ptychostab.sweep import callbacks  # the preflight's plan of this sweep

        assert self.config is not None  # type: ignore[attr-defined]
        plan = callbacks.current_plan()
        final = plan.final_jobs() if plan is not None else {}
        todo = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)
                if tuple(o) not in final]
        returns: dict[int, JobReturn] = {
            initial_job_idx + i: _skipped(o, final[tuple(o)])
            for i, o in enumerate(job_overrides) if tuple(o) in final}
        if returns:
            log.info(f"Skipping {len(returns)} run(s) with a final result.json "
                     f"(delete a run's result.json to train it again)")
        if todo:
            executor = self._executor(submitit)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))  # type: ignore[attr-defined]
            sweep_dir.mkdir(parents=True, exist_ok=True)
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

        from ptychostab.sweep import callbacks

        try:
            return job.results()[0]
        except FailedJobError as err:  # the job's own code raised: a bug or strict=true
            log.error(f"job {job.job_id} ({' '.join(overrides)}) raised:\n{err}")
            ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
            ret.return_value = err
            return ret
        except UncompletedJobError as err:  # killed by the scheduler (or by hand)
            state = _state(job)
            status = callbacks.record_killed(plan, overrides, state=state,
                                             job_id=str(job.job_id), message=str(err))
            log.warning(f"job {job.job_id} ({' '.join(overrides)}) ended without a result "
                        f"(state {state}): recorded as {status}")
            return _skipped(overrides, status)


def _state(job: Any) -> str:
    try:
        return str(job.watcher.get_state(job.job_id, mode="force"))
    except Exception:  # sacct missing or slow: the state is only informative
        return "UNKNOWN"


class PtychoSlurmLauncher(_SweepSafeMixin, BaseSubmititLauncher):
    _EXECUTOR = "slurm"


class PtychoLocalLauncher(_SweepSafeMixin, BaseSubmititLauncher):
    _EXECUTOR = "local"
