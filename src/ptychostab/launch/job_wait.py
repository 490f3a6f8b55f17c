"""Waiting for a sweep's jobs: every job polled together, none waited for forever.

The submitit launchers (``hydra_plugins.ptychostab_launcher``) hand the jobs of a launch to a
:class:`Waiter`. Each poll asks the scheduler once about all of them (:class:`SlurmReader`: one
``squeue`` and one ``sacct`` call; :class:`LocalReader`: submitit's controller processes), then
looks for each job's result file. A job is over when

- its result file is there (its code returned, or raised);
- the scheduler says it ended (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ...) and no
  result file came within the reader's ``result_wait_s`` (a shared file system may lag);
- its state reads ``UNKNOWN``, or it is in neither ``squeue`` nor ``sacct``, for ``grace_s``
  (``cluster.lost_job_grace_s``) counted from its first such reading: SLURM keeps no
  accounting row for an array task cancelled while pending, and submitit waits for such a task
  forever. Only answered polls count: a failed ``squeue``/``sacct`` call (an error, a
  time-out) says nothing about any job; it is retried at the next poll and the grace period
  does not advance (the time across it is not counted);
- ``submitit_local``: its controller process is gone without a result (at once).

A job pending for a reason (held, waiting for resources or priority) is pending, not lost: it
is waited for, and the progress lines say why it waits. The launcher records what an over job
left (:func:`ptychostab.launch.killed_jobs.record_killed`: ``missing`` when it never started,
else ``preempted`` / ``timeout`` / ``infra``).

:class:`StopSignals`: SIGINT/SIGTERM end the wait at its next check (a fraction of a second,
or one scheduler call); the launcher then says what still runs and how to resume.

:func:`find_alive`: the runs that a job of an earlier launch of the same sweep still trains or
will train: its SLURM job recorded at submission (:mod:`.submitted`) and still in the queue, its
``submitit_local`` controller still alive, or a fresh ``run.lock``. A rerun waits for them as
its own and submits only the rest.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ptychostab.launch import submitted
from ptychostab.launch.grid import TODO
from ptychostab.monitor import slurm
from ptychostab.runs import lock as lockmod

log = logging.getLogger(__name__)

RUNNING, WAITING, ENDED, UNKNOWN = "running", "waiting", "ended", "unknown"
#: submitit_local's job states (LocalJob.get_info) of a controller that is gone, and "GONE":
#: an adopted job whose process and run.lock are gone.
LOCAL_ENDED = frozenset(("FINISHED", "INTERRUPTED", "NO PROCESS AND NO RESULT", "GONE"))


def category(state: str | None) -> str:
    """``running``, ``waiting`` (queued, held, requeued), ``ended`` or ``unknown`` for a job
    state, SLURM's (``CANCELLED by 0`` reads as CANCELLED) or submitit_local's; a state
    nobody knows is ``unknown`` (the grace period decides)."""
    word = " ".join(str(state or "").split()).upper()
    if not word or word == "UNKNOWN":
        return UNKNOWN
    if word in LOCAL_ENDED:
        return ENDED
    found = slurm.slurm_category(word.split()[0])
    return {"running": RUNNING, "queued": WAITING, "dead": ENDED,
            "completed": ENDED}.get(found or "", UNKNOWN)


@dataclass
class Reading:
    """One poll of the scheduler. ``ok`` False: the call failed and says nothing of any job."""

    ok: bool
    states: dict[str, str] = field(default_factory=dict)  # job id -> state (squeue first)
    reasons: dict[str, str] = field(default_factory=dict)  # waiting job id -> squeue reason
    problem: str = ""

    def state(self, job_id: str) -> str | None:
        return self.states.get(str(job_id))

    def reason(self, job_id: str) -> str | None:
        return self.reasons.get(str(job_id))


# --- readers ------------------------------------------------------------------------------------
class SlurmReader:
    """One ``squeue`` (this user's jobs, every state SLURM still holds, one array task per
    line, with the reason a job waits) and one ``sacct`` (the jobs asked about) per poll.

    A call that fails (exit status, time-out, not on PATH) makes the whole reading failed,
    except ``sacct`` on a cluster without accounting (``accounting storage is disabled``),
    which is then left out for good and ``squeue`` alone is read.

    Parameters
    ----------
    timeout_s : float
        Per command.
    run, which : callable, optional
        ``subprocess.run`` and ``shutil.which`` (tests pass fakes).
    user : str, optional
        Whose jobs ``squeue`` lists (default: this process's user).
    """

    result_wait_s = 15.0  # a result file may reach a login node late (NFS): submitit's wait

    def __init__(self, *, timeout_s: float = 60.0, run: Callable = subprocess.run,
                 which: Callable[[str], str | None] = shutil.which, user: str | None = None):
        self.timeout_s = timeout_s
        self._run, self._which = run, which
        self.user = user or getpass.getuser()
        self.with_sacct = True

    def read(self, tracked: Sequence["Tracked"]) -> Reading:
        return self.read_ids([t.job_id for t in tracked])

    def read_ids(self, job_ids: Iterable[str]) -> Reading:
        bases = sorted({str(j).split("_")[0] for j in job_ids if j}, key=slurm.job_key)
        if not bases:
            return Reading(ok=True)
        out, problem = self._call(["squeue", f"--user={self.user}", "--array", "--noheader",
                                   "--states=all", "--format=%i|%T|%r"])
        if out is None:
            return Reading(ok=False, problem=problem)
        wanted = set(bases)
        out = "\n".join(line for line in out.splitlines()
                        if line.split("|")[0].split("_")[0].strip() in wanted)
        acct = None
        if self.with_sacct:
            acct, problem = self._call(["sacct", "--parsable2", "--noheader", "--allocations",
                                        "--format=JobID,State", f"--jobs={','.join(bases)}"])
            if acct is None and "disabled" in problem.lower():
                log.warning(f"sacct: {problem}: reading squeue alone from now on (a job gone "
                            f"from squeue is over after the grace period)")
                self.with_sacct = False
            elif acct is None:
                return Reading(ok=False, problem=problem)
        return reading_of(out, acct)

    def _call(self, cmd: list[str]) -> tuple[str | None, str]:
        if self._which(cmd[0]) is None:
            return None, f"{cmd[0]} is not on PATH"
        try:
            res = self._run(cmd, capture_output=True, text=True, timeout=self.timeout_s,
                            check=False)
        except (OSError, subprocess.SubprocessError) as err:
            return None, f"{cmd[0]}: {err}"
        if res.returncode != 0:
            return None, (f"{cmd[0]} exited {res.returncode}: "
                          f"{(res.stderr or res.stdout or '').strip()[:300]}")
        return res.stdout or "", ""


def reading_of(squeue: str, sacct: str | None) -> Reading:
    """A :class:`Reading` from answered ``squeue`` and ``sacct`` texts (``sacct`` None: not
    asked), by :func:`ptychostab.monitor.slurm.make_queue`: squeue beats sacct, and a job
    that sacct calls pending or running but squeue does not list (a task cancelled while
    pending, still in sacct's row of the array's pending tasks) reads as unknown."""
    queue = slurm.make_queue(squeue, sacct)
    return Reading(ok=True, states=queue.states, reasons=queue.reasons)


class LocalReader:
    """``submitit_local``: each job's controller process (``LocalJob.get_info``); a
    controller that is gone is over at once (its result file lands before it exits)."""

    result_wait_s = 0.0

    def read(self, tracked: Sequence["Tracked"]) -> Reading:
        states = {}
        for t in tracked:
            if t.job is None:
                continue
            try:
                states[t.job_id] = str(t.job.get_info().get("jobState") or "UNKNOWN")
            except Exception:  # submitit: "hard to reproduce" errors; the grace decides
                continue
        return Reading(ok=True, states=states)


def reader_for(backend: str) -> SlurmReader | LocalReader:
    """The reader of a submitit executor name (``slurm`` or ``local``)."""
    return SlurmReader() if backend == "slurm" else LocalReader()


# --- one job, and the wait for all of them -------------------------------------------------------
@dataclass
class Tracked:
    """One job of a launch (or of an earlier launch, ``adopted``) being waited for."""

    index: int  # the grid index of the job (its first run; a pack: its leader)
    overrides: list[str]
    job_id: str
    job: Any = None  # the submitit job (its result file); None: the run's records only
    alive: Callable[[], bool] | None = None  # adopted without a queue entry: alive while True
    adopted: bool = False
    state: str | None = None  # the last answered state
    reason: str | None = None  # why it waits (squeue), while it waits
    unknown_s: float = 0.0  # answered polls in a row that did not know it, in seconds
    ended_since: float | None = None
    over: str | None = None  # the state it ended in without a result
    lost: bool = False  # over because nobody knew it for the grace period
    done: bool = False  # its result file is there
    _last_unknown: float | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.done or self.over is not None

    def has_result(self) -> bool:
        paths = getattr(self.job, "paths", None)
        try:
            return bool(paths is not None and Path(paths.result_pickle).exists())
        except OSError:
            return False

    def describe(self) -> str:
        state = self.state or "unknown"
        return f"{self.job_id} {state}" + (f" ({self.reason})" if self.reason else "")


class Waiter:
    """Poll every tracked job until each has a result or is over (module docstring), or until
    a stop is requested.

    Parameters
    ----------
    tracked : sequence of Tracked
        The jobs to wait for (submitted by this launch, or adopted from an earlier one).
    reader : SlurmReader or LocalReader (or a double with ``read`` and ``result_wait_s``)
        Asked once per poll about every pending job.
    grace_s : float
        How long a job may read UNKNOWN / be in no queue (answered polls only) before it is
        over (``cluster.lost_job_grace_s``).
    poll_s : float
        Seconds between polls (``cluster.poll_interval_s``); 1 s at most while an ended job's
        result file is awaited.
    stop : StopSignals, optional
        Checked before each poll and every 0.2 s while sleeping.
    on_finish : callable, optional
        ``on_finish(tracked)``, once per job, as it finishes (result file or over).
    clock, sleep : callable, optional
        Time source and sleep (tests pass fakes).
    report_every_s : float
        At most one progress line this often (and only when it changed).
    """

    def __init__(self, tracked: Sequence[Tracked], reader: Any, *, grace_s: float,
                 poll_s: float, stop: "StopSignals | None" = None,
                 on_finish: Callable[[Tracked], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, report_every_s: float = 60.0):
        self.tracked = list(tracked)
        self.reader = reader
        self.grace_s, self.poll_s = float(grace_s), max(float(poll_s), 0.01)
        self.stop = stop
        self.on_finish = on_finish
        self.clock, self.sleep = clock, sleep
        self.report_every_s = report_every_s
        self.failed_polls = 0
        self._failed_in_a_row = 0
        self._last_report: tuple[float, str] | None = None

    def pending(self) -> list[Tracked]:
        return [t for t in self.tracked if not t.finished]

    def run(self) -> bool:
        """Wait; True when every job finished, False when stopped by a signal."""
        while True:
            if self._stopped():
                return False
            self.poll()
            if not self.pending():
                return True
            self._report()
            if not self._pause(self._next_delay()):
                return False

    def poll(self) -> list[Tracked]:
        """One poll: one reading for every pending job, then their result files. Returns the
        jobs that finished in it."""
        pending = self.pending()
        if not pending:
            return []
        asked = [t for t in pending if t.alive is None]
        reading = self.reader.read(asked) if asked else Reading(ok=True)
        now = self.clock()
        if not reading.ok:
            self.failed_polls += 1
            self._failed_in_a_row += 1
            if self._failed_in_a_row in (1, 3) or self._failed_in_a_row % 20 == 0:
                log.warning(f"cannot ask the scheduler ({reading.problem}); retrying in "
                            f"{self.poll_s:g} s (poll {self._failed_in_a_row} failed in a row; "
                            f"no job is taken for lost while the queue does not answer)")
        else:
            self._failed_in_a_row = 0
        finished = []
        for t in pending:
            if t.has_result():
                t.done = True
            elif t.alive is not None:
                self.observe(t, "RUNNING" if _safe(t.alive) else "GONE", None, now)
            elif reading.ok:
                self.observe(t, reading.state(t.job_id), reading.reason(t.job_id), now)
            else:
                t._last_unknown = None  # nothing learnt: the grace clock pauses
            if t.finished:
                finished.append(t)
                if self.on_finish is not None:
                    self.on_finish(t)
        return finished

    def observe(self, t: Tracked, state: str | None, reason: str | None, now: float) -> None:
        """Update one job from an answered reading (``state`` None: not in the reading)."""
        kind = category(state)
        if kind == UNKNOWN:
            if t._last_unknown is not None:
                t.unknown_s += now - t._last_unknown
            t._last_unknown = now
            t.reason = None
            if t.unknown_s >= self.grace_s:
                t.over, t.lost = str(state or "UNKNOWN"), True
            return
        t.unknown_s, t._last_unknown, t.state = 0.0, None, str(state)
        if kind in (RUNNING, WAITING):
            t.ended_since = None
            t.reason = reason if kind == WAITING else None
            return
        t.reason = None
        if t.ended_since is None:
            t.ended_since = now
        if now - t.ended_since >= float(getattr(self.reader, "result_wait_s", 0.0)):
            t.over = str(state)

    def _next_delay(self) -> float:
        settling = [t for t in self.pending() if t.ended_since is not None]
        if settling:  # an ended job's result file may still come: look again soon
            return min(self.poll_s, 1.0)
        return self.poll_s

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.requested

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` in short slices; False as soon as a stop is requested."""
        end = self.clock() + seconds
        while True:
            if self._stopped():
                return False
            left = end - self.clock()
            if left <= 0:
                return True
            self.sleep(min(left, 0.2))

    def summary(self) -> str:
        """``3 running, 9 waiting (Resources 8, JobHeldUser 1), 1 unknown for 40 s``."""
        pending = self.pending()
        kinds = Counter(category(t.state) if t.unknown_s == 0 and t._last_unknown is None
                        else UNKNOWN for t in pending)
        reasons = Counter(t.reason for t in pending if t.reason)
        parts = []
        if kinds[RUNNING]:
            parts.append(f"{kinds[RUNNING]} running")
        if kinds[WAITING]:
            why = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
            parts.append(f"{kinds[WAITING]} waiting" + (f" ({why})" if why else ""))
        if kinds[ENDED]:
            parts.append(f"{kinds[ENDED]} ended, result file awaited")
        if kinds[UNKNOWN]:
            longest = max((t.unknown_s for t in pending), default=0.0)
            parts.append(f"{kinds[UNKNOWN]} unknown to the scheduler (longest {longest:.0f} s; "
                         f"over after {self.grace_s:g} s)")
        return ", ".join(parts) or "nothing"

    def _report(self) -> None:
        text = self.summary()
        now = self.clock()
        if self._last_report is not None and (text == self._last_report[1] or
                                              now - self._last_report[0] < self.report_every_s):
            return
        self._last_report = (now, text)
        log.info(f"waiting for {len(self.pending())} job(s): {text}")


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:  # a liveness check that cannot tell: alive (the lock's lease ends it)
        return True


# --- SIGINT / SIGTERM ----------------------------------------------------------------------------
class StopSignals:
    """While entered (in the main thread), SIGINT and SIGTERM only set :attr:`signum`: the
    wait ends at its next check and the launcher says what still runs. A second SIGINT raises
    KeyboardInterrupt at once. The previous handlers come back on exit."""

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# --- the jobs of an earlier launch ---------------------------------------------------------------
@dataclass
class Alive:
    """A run that a job of an earlier launch still trains or will train."""

    job_id: str  # SLURM job id, or a description of the process (local, run.lock)
    how: str  # "queue" (recorded job, in the queue), "lock" (fresh run.lock), "pid", "unsure"
    leader: Path  # the run folder whose job it is (a pack: its leader)
    state: str | None = None
    reason: str | None = None
    check: Callable[[], bool] | None = field(default=None, repr=False)  # alive while True

    def describe(self) -> str:
        what = {"queue": "in the queue", "lock": "its run.lock is fresh",
                "pid": "its process runs", "unsure": "recorded; the queue did not answer"}
        state = f" {self.state}" + (f" ({self.reason})" if self.reason else "") \
            if self.state else ""
        return f"{self.job_id}{state}: {what.get(self.how, self.how)}"


def _lock_fresh(run_dir: Path) -> dict | None:
    info = lockmod.read_lock(Path(run_dir) / lockmod.LOCK)
    if info is None:
        return None
    try:
        return info if lockmod.stale_reason(info) is None else None
    except (TypeError, ValueError):
        return None


def _pid_runs(pid: Any, start: Any) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    now = lockmod.process_start(pid)
    return now is not None and (not start or now == start)


def find_alive(plan: Any, *, backend: str, reader: Any = None, attempts: int = 3,
               retry_s: float = 2.0, sleep: Callable[[float], None] = time.sleep
               ) -> dict[Path, Alive]:
    """The unfinished runs of ``plan`` that a job of an earlier launch still trains or will
    train (module docstring).

    SLURM: the job recorded in ``submitted.json`` for the run, or named by its fresh
    ``run.lock``, is running or waiting in the queue; a fresh lock without a SLURM job (a run
    started by hand) is waited for while it stays fresh. When the queue does not answer, every
    recorded job is taken for alive ("unsure"): the wait then settles it, and the run is not
    submitted twice. ``submitit_local``: the recorded controller process still runs (same pid,
    same start time), or the lock is fresh.

    Parameters
    ----------
    plan : ptychostab.launch.plan.Plan
        The sweep's plan; only its to-do jobs are looked at.
    backend : {"slurm", "local"}
        The submitit executor of this launch.
    reader : SlurmReader, optional
        Asked once (``read_ids``) about every recorded or locked SLURM job.
    attempts, retry_s : int, float
        Tries of the queue, and the pause between them, before "unsure".
    sleep : callable, optional
        The pause (tests pass a fake).

    Returns
    -------
    dict of Path to Alive
        Run folder -> the live job (its leader's, for a pack member). Read the records after
        this call, not before: a job that ended in between left its result
        (:func:`ptychostab.launch.preflight.refresh_finished`).
    """
    sweep_dir = Path(plan.sweep_dir)
    todo = [j for j in plan.jobs if j.status == TODO]
    if not todo:
        return {}
    entries = submitted.read(sweep_dir)
    here = socket.gethostname()
    found: dict[Path, Alive] = {}
    locks = {j.run_dir: _lock_fresh(j.run_dir) for j in todo}
    if backend == "slurm":
        recorded = {j.run_dir: entries.get(submitted.rel(sweep_dir, j.run_dir)) for j in todo}
        ids = {str(e["job_id"]) for e in recorded.values()
               if e and e.get("backend") == "slurm" and e.get("job_id")}
        ids |= {str(info["slurm_job_id"]) for info in locks.values()
                if info and info.get("slurm_job_id")}
        reader = reader or SlurmReader()
        reading = Reading(ok=True)
        for attempt in range(max(attempts, 1) if ids else 0):
            reading = reader.read_ids(sorted(ids))
            if reading.ok:
                break
            if attempt + 1 < attempts:
                sleep(retry_s)
        if not reading.ok:
            log.warning(f"cannot ask the queue about the jobs of earlier launches "
                        f"({reading.problem}): runs with a recorded job are waited for, not "
                        f"submitted again")
        for job in todo:
            entry, info = recorded[job.run_dir], locks[job.run_dir]
            leader = sweep_dir / (entry or {}).get("leader", submitted.rel(sweep_dir,
                                                                          job.run_dir))
            candidates = []
            if entry and entry.get("backend") == "slurm" and entry.get("job_id"):
                candidates.append((str(entry["job_id"]), "queue", leader))
            if info and info.get("slurm_job_id"):
                candidates.append((str(info["slurm_job_id"]), "lock", leader))
            for jid, how, lead in candidates:
                state = reading.state(jid)
                if reading.ok and category(state) in (RUNNING, WAITING):
                    found[job.run_dir] = Alive(jid, how, lead, state, reading.reason(jid))
                    break
                if not reading.ok and how == "queue":
                    found[job.run_dir] = Alive(jid, "unsure", lead)
                    break
            else:
                if info and not info.get("slurm_job_id"):
                    found[job.run_dir] = _lock_alive(job.run_dir, info)
        return found
    for job in todo:
        entry, info = entries.get(submitted.rel(sweep_dir, job.run_dir)), locks[job.run_dir]
        if (entry and entry.get("backend") == "local" and entry.get("host") == here
                and _pid_runs(entry.get("pid"), entry.get("pid_start"))):
            pid, start = entry.get("pid"), entry.get("pid_start")
            run_dir = job.run_dir
            found[job.run_dir] = Alive(
                f"pid {pid}", "pid", sweep_dir / entry.get("leader", submitted.rel(
                    sweep_dir, job.run_dir)), "RUNNING",
                check=lambda p=pid, s=start, r=run_dir: _pid_runs(p, s) or bool(_lock_fresh(r)))
        elif info:
            found[job.run_dir] = _lock_alive(job.run_dir, info)
    return found


def _lock_alive(run_dir: Path, info: dict) -> Alive:
    return Alive(f"pid {info.get('pid')} on {info.get('host')}", "lock", Path(run_dir),
                 "RUNNING", check=lambda r=Path(run_dir): bool(_lock_fresh(r)))
