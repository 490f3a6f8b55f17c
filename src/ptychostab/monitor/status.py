"""The live state of sweep folders: what has ended, what runs, waits, died or never started.

Reads only: the run records (:mod:`ptychostab.runs.records`), the liveness files
(:mod:`ptychostab.runs.lock`), ``plan.csv`` and submitit's ``.submitit/`` folder of each sweep,
plus a :class:`~ptychostab.monitor.slurm.Queue` of SLURM job states handed in (parsed from
``squeue``/``sacct`` text by :mod:`ptychostab.monitor.slurm`; :mod:`ptychostab.cli.status` runs
the commands).
Pure Python (no torch, Lightning, Hydra or pandas); it never writes a file.

Every run carries two labels. ``status``/``family``: what its records say, word for word as
the aggregator (docs/contracts.md, Run records): ``result.json``'s status, ``corrupt`` for an
unreadable one or an unknown status, ``missing`` without one; ``family`` =
:func:`records.family`. ``live``: what it does now, the first that applies: ``done`` (a final
record); its SLURM job's state when known (``running``; ``queued``: pending or requeued;
``dead``: FAILED, CANCELLED, NODE_FAIL, OUT_OF_MEMORY, TIMEOUT, ...); ``running`` (``run.lock``
fresh: :func:`lock.stale_reason` finds nothing); ``not started`` (no ``manifest.json``, no
result, no history); ``stopped`` (started, not final, nothing alive: the next run of the sweep
resumes or retries it). A fresh lock naming another SLURM job (or none) beats that job's state.

SLURM job of a run: the fresh lock's ``slurm_job_id``, else, among the ids in the manifest
(``slurm`` and every segment's), the result (``slurm_job_id``, set by the launcher), the
launcher's record at submission (``submitted.json``, written by
:mod:`ptychostab.launch.submitted`, read by :mod:`~ptychostab.analysis.sweepdir`) and
submitit's folder (``.submitit/<job>/<job>_submitted.pkl`` names the grid index
``job_id_for_<i>``, i.e. row ``i`` of ``plan.csv``; read as pickle opcodes, never unpickled),
a running or pending one, else the newest. A queued run's ``slurm_reason`` is why its job
waits (``squeue``'s reason: ``Resources``, ``Priority``, ``JobHeldUser``, ``Dependency``, ...).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ptychostab.analysis import sweepdir
from ptychostab.monitor import slurm
from ptychostab.runs import lock as lockmod
from ptychostab.runs import records

LIVE_STATES = ("done", "running", "queued", "dead", "not started", "stopped")
FAMILY_NAMES = tuple(dict.fromkeys(records.FAMILIES.values()))  # ok, instability, ...
RATE_WINDOW = 5  # epochs of history behind steps/s


def known_jobs(sweeps: Iterable["SweepState"]) -> list[str]:
    """Base job ids (array ids) the sweeps know of: what to ask ``sacct -j`` about."""
    return sorted({j.split("_")[0] for s in sweeps for r in s.runs for j in r.job_candidates},
                  key=slurm.job_key)


# --- one run ----------------------------------------------------------------------------------
@dataclass
class RunState:
    """One planned or found run (see the module docstring for ``status``, ``family``, ``live``)."""

    arm_id: str
    seed: Any
    run_dir: str
    arm_label: str | None = None
    in_plan: bool = False
    started: bool = False
    status: str = "missing"
    family: str = "not final"
    live: str = "not started"
    failure_kind: str | None = None
    cause: str | None = None
    problem: str | None = None
    epochs_done: int = 0
    max_epochs: int | None = None
    global_step: int | None = None
    epoch_s: float | None = None  # median epoch duration of this run
    steps_per_s: float | None = None
    eta_s: float | None = None
    lock: dict | None = None  # fresh, stale_reason, pid, host, slurm_job_id, pack_id, ...
    slurm_job_id: str | None = None
    slurm_state: str | None = None
    slurm_reason: str | None = None  # why a queued job waits (squeue %r: Resources, ...)
    job_candidates: list[str] = field(default_factory=list)
    _steps_per_epoch: float | None = field(default=None, repr=False)
    _since_epoch_s: float = field(default=0.0, repr=False)  # since history.csv was written

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k[0] != "_" and k != "job_candidates"}


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return int(v)


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _manifest_jobs(man: dict) -> list[str]:
    blocks = [man.get("slurm")] + [s.get("slurm") for s in man.get("segments") or []
                                   if isinstance(s, dict)]
    out = []
    for ids in blocks:
        if not isinstance(ids, dict):
            continue
        array, task = ids.get("SLURM_ARRAY_JOB_ID"), ids.get("SLURM_ARRAY_TASK_ID")
        jid = f"{array}_{task}" if array and task is not None else ids.get("SLURM_JOB_ID")
        if jid:
            out.append(str(jid))
    return out


def progress(rows: list[dict]) -> tuple[float | None, float | None, float | None]:
    """(epoch seconds, steps per epoch, steps per second) from history rows (median epoch,
    rate over the last :data:`RATE_WINDOW` epochs; one row: its totals); None when unknown."""
    pts = [(r.get("global_step"), r.get("wall_s")) for r in rows]
    pts = [p for p in pts if all(isinstance(x, float) and math.isfinite(x) for x in p)]
    if len(pts) < 2:
        step, wall = pts[0] if pts else (0.0, 0.0)
        return wall or None, step or None, step / wall if wall > 0 and step else None
    pairs = list(zip(pts, pts[1:], strict=False))
    d_wall = [b[1] - a[1] for a, b in pairs if b[1] > a[1]]
    d_step = [b[0] - a[0] for a, b in pairs if b[0] > a[0]]
    first, last = pts[max(len(pts) - 1 - RATE_WINDOW, 0)], pts[-1]
    rate = (last[0] - first[0]) / (last[1] - first[1]) if last[1] > first[1] else None
    return (statistics.median(d_wall) if d_wall else None,
            statistics.median(d_step) if d_step else None, rate)


def run_eta(run: RunState, steps_per_epoch: float | None, since_epoch_s: float) -> float | None:
    """Seconds left: remaining epochs x steps per epoch / steps per second, less the time spent
    in the current epoch (``since_epoch_s``, at most one epoch)."""
    if run.max_epochs is None or not run.steps_per_s or not steps_per_epoch:
        return None
    left = max(run.max_epochs - run.epochs_done, 0) * steps_per_epoch / run.steps_per_s
    epoch = steps_per_epoch / run.steps_per_s
    return max(left - min(max(since_epoch_s, 0.0), epoch), 0.0) if left else 0.0


def read_run_state(run: RunState, *, now: float, extra_jobs: Iterable[str] = ()) -> None:
    """Fill ``run`` from its folder (read only); :func:`resolve` then adds the queue's word."""
    folder = Path(run.run_dir)
    man = records.read_json(folder / records.MANIFEST)
    res = records.read_json(folder / records.RESULT)
    jobs = list(extra_jobs)
    if man.data is not None:
        run.started = True
        run.max_epochs = _int(_dig(man.data, "config", "trainer", "max_epochs")
                              or _dig(man.data, "effective", "max_epochs"))
        run.arm_label = run.arm_label or _dig(man.data, "arm", "label")
        jobs += _manifest_jobs(man.data)
    if res.problem != "absent":
        run.started = True
        _from_result(run, res)
        if isinstance(res.data, dict) and res.data.get("slurm_job_id"):
            jobs.append(str(res.data["slurm_job_id"]))
    if man.problem not in (None, "absent") and run.problem is None:
        run.problem = man.problem  # the result (or the run's absence of one) still decides
    run.family = records.family(run.status)
    rows = records.read_history(folder / records.HISTORY).data or []
    run.epochs_done = len(rows)
    run.global_step = _int(rows[-1].get("global_step")) if rows else None
    run.epoch_s, run._steps_per_epoch, run.steps_per_s = progress(rows)
    run._since_epoch_s = now - _mtime(folder / records.HISTORY, now)
    info = lockmod.read_lock(folder / lockmod.LOCK)
    if info is not None:
        try:
            reason = lockmod.stale_reason(info, now=_dt.datetime.fromtimestamp(
                now, _dt.timezone.utc))
        except (TypeError, ValueError) as err:  # e.g. a heartbeat without a time zone
            reason = f"unreadable lock: {err}"
        run.lock = {"fresh": reason is None, "stale_reason": reason,
                    **{k: info.get(k) for k in ("pid", "host", "slurm_job_id", "pack_id",
                                                "start_time", "heartbeat_time")}}
        if info.get("slurm_job_id"):
            jobs.append(str(info["slurm_job_id"]))
    run.started = run.started or bool(rows) or info is not None
    run.job_candidates = sorted(set(jobs), key=slurm.job_key)
    resolve(run, slurm.Queue())


def resolve(run: RunState, queue: slurm.Queue) -> None:
    """Set the run's SLURM job and state, ``live`` and (running) ``eta_s`` from ``queue``."""
    fresh = bool(run.lock and run.lock["fresh"])
    lock_job = str((run.lock or {}).get("slurm_job_id") or "")
    run.slurm_job_id = (lock_job if fresh and lock_job
                        else slurm.pick_job(run.job_candidates, queue))
    run.slurm_state = queue.state(run.slurm_job_id)
    run.live = live_state(run, fresh=fresh, lock_job=lock_job)
    run.slurm_reason = queue.reason(run.slurm_job_id) if run.live == "queued" else None
    run.eta_s = (run_eta(run, run._steps_per_epoch, run._since_epoch_s)
                 if run.live == "running" else None)


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default


def _from_result(run: RunState, res: records.Loaded) -> None:
    data = res.data if isinstance(res.data, dict) else {}
    status = data.get("status")
    if not res.ok or status not in records.ALL_STATUSES or status in records.READ_PROBLEMS:
        run.status, run.problem = "corrupt", res.problem or f"unknown status {status!r}"
        return
    run.status = status
    fail = data.get("failure") if isinstance(data.get("failure"), dict) else {}
    run.failure_kind = fail.get("kind") if status != records.OK else None
    run.cause = fail.get("cause")


def live_state(run: RunState, *, fresh: bool, lock_job: str) -> str:
    """The ``live`` label (module docstring): done, running, queued, dead, not started, stopped."""
    if records.is_final(run.status):
        return "done"
    by_slurm = slurm.slurm_category(run.slurm_state)
    if by_slurm in ("running", "queued", "dead") and (not fresh or lock_job == run.slurm_job_id):
        return by_slurm
    if fresh:
        return "running"
    return "stopped" if run.started else "not started"


# --- a sweep ----------------------------------------------------------------------------------
@dataclass
class SweepState:
    sweep: str
    path: str
    runs: list[RunState]
    plan: bool  # plan.csv found
    problems: list[str] = field(default_factory=list)


def read_sweep(sweep_dir: str | os.PathLike, queue: slurm.Queue | None = None, *,
               now: float) -> SweepState:
    """Every run of ``plan.csv`` and every run folder of one sweep folder (then
    :func:`apply_queue` with ``queue`` when given)."""
    sweep_dir = Path(sweep_dir)
    plan, problem = sweepdir.read_plan(sweep_dir)
    plan = plan or []
    found = sweepdir.find_run_dirs(sweep_dir)
    by_index = slurm.submitit_jobs(sweep_dir)
    recorded = sweepdir.submitted_job_ids(sweep_dir)  # the launcher's record, at submission
    runs, seen = [], set()
    for index, row in enumerate(plan):
        key = (row["arm_id"], row["seed"])
        if key in seen:
            continue
        seen.add(key)
        run = RunState(arm_id=key[0], seed=key[1], in_plan=True,
                       arm_label=row.get("arm_label") or None,
                       run_dir=str(found.get(key, sweepdir.run_dir(sweep_dir, *key))))
        wanted = set(str(row.get("overrides") or "").split())
        extra = [j for j, strings in by_index.get(index, ()) if wanted <= strings]
        extra += _recorded(recorded, sweep_dir, Path(run.run_dir))
        read_run_state(run, now=now, extra_jobs=extra)
        runs.append(run)
    for key, folder in found.items():
        if key not in seen:
            run = RunState(arm_id=key[0], seed=key[1], run_dir=str(folder))
            read_run_state(run, now=now, extra_jobs=_recorded(recorded, sweep_dir, folder))
            runs.append(run)
    _fill_from_arm(runs)
    problems = [problem] if problem else []
    if not sweep_dir.is_dir():
        problems.append(f"no such folder: {sweep_dir}")
    state = SweepState(sweep=sweep_dir.name, path=str(sweep_dir), runs=runs, plan=bool(plan),
                       problems=problems)
    return apply_queue(state, queue) if queue is not None else state


def _recorded(recorded: dict[str, str], sweep_dir: Path, run_dir: Path) -> list[str]:
    jid = recorded.get(sweepdir.run_key(sweep_dir, run_dir))
    return [jid] if jid else []


def apply_queue(state: SweepState, queue: slurm.Queue) -> SweepState:
    """:func:`resolve` every run of ``state`` against ``queue`` (in place; returns ``state``)."""
    for run in state.runs:
        resolve(run, queue)
    return state


def _fill_from_arm(runs: list[RunState]) -> None:
    """A run without a manifest (not started) takes its arm's ``max_epochs`` and label."""
    epochs = {r.arm_id: r.max_epochs for r in runs if r.max_epochs is not None}
    labels = {r.arm_id: r.arm_label for r in runs if r.arm_label}
    for r in runs:
        r.max_epochs = epochs.get(r.arm_id) if r.max_epochs is None else r.max_epochs
        r.arm_label = r.arm_label or labels.get(r.arm_id)


# --- counts and ETA ---------------------------------------------------------------------------
def counts(runs: list[RunState]) -> dict:
    """``{"n_runs", "by_status" (every status), "by_family" (the four), "live" (every state),
    "waiting" ({reason: n} of the queued runs whose job waits for a reason)}``."""
    def tally(keys: Iterable[str], get: Callable[[RunState], str]) -> dict[str, int]:
        out = dict.fromkeys(keys, 0)
        for r in runs:
            out[get(r)] = out.get(get(r), 0) + 1
        return out

    waiting = [r for r in runs if r.live == "queued" and r.slurm_reason]
    return {"n_runs": len(runs), "by_status": tally(records.ALL_STATUSES, lambda r: r.status),
            "by_family": tally(FAMILY_NAMES, lambda r: r.family),
            "live": tally(LIVE_STATES, lambda r: r.live),
            "waiting": _reasons(waiting)}


def _reasons(runs: list[RunState]) -> dict[str, int]:
    """``{reason: queued runs}`` (squeue's reason a queued job waits: Resources, Priority,
    JobHeldUser, ...)."""
    out: dict[str, int] = {}
    for r in runs:
        out[str(r.slurm_reason)] = out.get(str(r.slurm_reason), 0) + 1
    return dict(sorted(out.items()))


ASSUMPTION = ("ETA = remaining work / parallelism. Remaining work: a running run's own ETA; "
              "every other non-final run (queued, not started, stopped, dead: the latter two "
              "after a rerun of the sweep) its remaining epochs x its arm's median epoch time "
              "measured in this sweep (else the sweep's). Parallelism: the runs observed "
              "running now (at least 1). Runs that end early by instability are not "
              "anticipated.")


def eta(runs: list[RunState]) -> dict:
    """The sweep's ETA (see :data:`ASSUMPTION`), with its parts."""
    per_arm: dict[str, list[float]] = {}
    for r in runs:
        if r.epoch_s:
            per_arm.setdefault(r.arm_id, []).append(r.epoch_s)
    arm_epoch = {a: statistics.median(v) for a, v in per_arm.items()}
    overall = statistics.median(arm_epoch.values()) if arm_epoch else None
    work, unknown, left = 0.0, 0, 0
    for r in runs:
        if r.live == "done":
            continue
        left += 1
        epoch_s = arm_epoch.get(r.arm_id, overall)
        if r.live == "running" and r.eta_s is not None:
            work += r.eta_s
        elif epoch_s is not None and r.max_epochs is not None:
            work += max(r.max_epochs - r.epochs_done, 0) * epoch_s
        else:
            unknown += 1
    per_run = [r.max_epochs * arm_epoch.get(r.arm_id, overall) for r in runs
               if r.max_epochs is not None and arm_epoch.get(r.arm_id, overall) is not None]
    parallel = max(sum(r.live == "running" for r in runs), 1)
    known = left > unknown or left == 0
    return {"eta_s": (work / parallel if known else None), "work_s": work, "runs_left": left,
            "runs_without_estimate": unknown, "parallelism": parallel,
            "per_run_s": statistics.median(per_run) if per_run else None,
            "assumption": ASSUMPTION}


def arm_summary(arm_id: str, runs: list[RunState]) -> dict:
    running = [{k: getattr(r, k) for k in ("seed", "epochs_done", "max_epochs", "steps_per_s",
                                           "eta_s", "slurm_job_id")} | {"epoch": r.epochs_done}
               for r in runs if r.live == "running"]
    return {"arm_id": arm_id, "label": next((r.arm_label for r in runs if r.arm_label), None),
            "counts": counts(runs), "running": running, "runs": [r.to_dict() for r in runs]}


def sweep_summary(state: SweepState) -> dict:
    arms: dict[str, list[RunState]] = {}
    for r in state.runs:
        arms.setdefault(r.arm_id, []).append(r)
    return {"sweep": state.sweep, "path": state.path, "plan": state.plan,
            "problems": state.problems, "counts": counts(state.runs), "eta": eta(state.runs),
            "arms": [arm_summary(a, rs) for a, rs in arms.items()]}


SCHEMA = "ptychostab.status/1"


def snapshot(sweeps: list[SweepState], queue: slurm.Queue, *, now: float) -> dict:
    """The whole status document (the ``--json`` schema, documented in the CLI)."""
    every = [r for s in sweeps for r in s.runs]
    return {"schema": SCHEMA,
            "generated_at": _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
            .isoformat(timespec="seconds"),
            "slurm": {"sources": queue.sources, "problems": queue.problems,
                      "note": queue.note, "job_states": len(queue.states)},
            "sweeps": [sweep_summary(s) for s in sweeps],
            "totals": {"counts": counts(every), "eta": eta(every)}}
