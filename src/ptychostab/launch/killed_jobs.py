"""Records for runs that could not write their own: killed by the scheduler, or raised past the
job's own handling.

:func:`record_killed` is called by the launchers (``hydra_plugins.ptychostab_launcher``) for a
job the scheduler ended without a result; :func:`write_result` builds an ``exception`` /
``timeout`` / ``preempted`` / ``infra`` record from what is on disk (manifest, history). A job
that never started (no manifest) is left ``missing``; a final result is never overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ptychostab.runs import records

if TYPE_CHECKING:
    from ptychostab.launch.plan import Plan


def write_result(run_dir: Path, cfg: Any, status: str, message: str, *,
                  cause: str | None = None, **extra: Any) -> None:
    """An ``exception``/``timeout``/``preempted``/``infra`` result for a run that died early,
    built from what is on disk (manifest, history)."""
    manifest = records.read_json(run_dir / records.MANIFEST).data or {}
    rows = records.read_history(run_dir / records.HISTORY).data or []
    last = rows[-1] if rows else {}
    epoch = int(last["epoch"]) + 1 if rows and last.get("epoch") == last.get("epoch") else 0
    step = last.get("global_step")
    wall = last.get("wall_s")
    step = int(step) if isinstance(step, float) and step == step else None
    wall = float(wall) if isinstance(wall, float) and wall == wall else None
    sweep = manifest.get("sweep") or _get(cfg, "sweep")
    arm_id = manifest.get("arm_id") or run_dir.parent.name
    seed = manifest.get("seed", _get(cfg, "seed"))
    record = records.result_record(
        status=status, sweep=sweep, arm_id=arm_id, seed=seed,
        failure_info=records.failure(status, epoch=epoch, step=step, wall_s=wall,
                                     message=message, cause=cause),
        metrics={}, metrics_best=None, grad_norm={}, epochs_completed=len(rows),
        global_step=step or 0, wall_s=wall or 0.0, params={}, peak_memory_bytes=None, **extra)
    records.atomic_write_json(run_dir / records.RESULT, record)


def _get(cfg: Any, key: str) -> Any:
    try:
        return cfg[key] if cfg is not None else None
    except Exception:
        return None


# SLURM job states (sacct) -> record status (and infra cause). A scheduler's out-of-memory kill
# and a node failure are infrastructure faults (``infra``, not final: a rerun retries them; an
# out-of-memory error raised in the process is the job's own final ``oom``). Anything else that
# kills a started job (CANCELLED, PREEMPTED, REQUEUED, ...) is "preempted": stopped from
# outside, resumable from last.ckpt by the next run of the sweep. None of these is final.
_STATE_STATUS = {"TIMEOUT": ("timeout", None), "DEADLINE": ("timeout", None),
                 "OUT_OF_MEMORY": ("infra", "memory"), "NODE_FAIL": ("infra", "node"),
                 "BOOT_FAIL": ("infra", "node")}


def classify_state(state: str) -> tuple[str, str | None]:
    """(status, infra cause or None) for a SLURM state such as ``OUT_OF_MEMORY``."""
    return _STATE_STATUS.get(state.split()[0].upper() if state else "", ("preempted", None))


def status_for_state(state: str) -> str:
    return classify_state(state)[0]


def record_killed(plan: "Plan | None", overrides: Sequence[str], *, state: str,
                  job_id: str, message: str = "", scheduler: str = "SLURM") -> str:
    """Record a job the scheduler ended without a result; returns the status it now has.

    A job that never started (no manifest.json) is left alone: it is ``missing`` (plan.csv
    lists it; no result.json is written). A final result (the job finished just before the
    kill) is never overwritten. A started job gets its status from ``state``
    (:func:`classify_state`: ``preempted`` for CANCELLED, UNKNOWN and a job lost to the
    scheduler, ``timeout``, ``infra``). ``scheduler`` names the job in the message
    (``SLURM``, ``submitit_local``).
    """
    job = plan.job_for(overrides) if plan is not None else None
    if job is None:
        return "unknown"
    run_dir = job.run_dir
    current = records.read_json(run_dir / records.RESULT)
    if current.ok and records.is_final(current.data.get("status")):
        return str(current.data["status"])
    if not (run_dir / records.MANIFEST).exists():
        return "missing"
    status, cause = classify_state(state)
    first = message.strip().splitlines()[0] if message.strip() else ""
    what = {"memory": "killed by the scheduler for exceeding its memory limit (retried by a "
                      "rerun; raise cluster.mem_gb)",
            "node": "lost with its node (retried by a rerun)"}.get(cause or "", "")
    write_result(run_dir, {"sweep": plan.sweep, "seed": job.seed}, status,
                  f"{scheduler} job {job_id} ended in state {state} without a result"
                  f"{': ' + what if what else ''}. {first}".strip(),
                  cause=cause, recorded_by="launcher", slurm_state=state, slurm_job_id=job_id)
    return status
