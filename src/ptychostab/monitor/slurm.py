"""SLURM's view of a sweep's jobs: ``squeue``/``sacct`` output parsed into a :class:`Queue`, job
states into categories, and submitit's job folders mapped to grid indices.

Pure Python: it parses text handed in (:mod:`ptychostab.cli.status` and the launcher run the
commands) and reads ``.submitit/`` as pickle opcodes (nothing is unpickled).
"""

from __future__ import annotations

import pickletools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ptychostab.analysis import sweepdir

SLURM_QUEUED = frozenset(("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                          "SPECIAL_EXIT"))
SLURM_RUNNING = frozenset(("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT",
                           "SIGNALING", "RESIZING", "STOPPED"))
SLURM_DEAD = frozenset(("FAILED", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT",
                        "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"))


@dataclass
class Queue:
    """SLURM job states by job id (``123`` or ``<array>_<task>``); ``squeue`` beats ``sacct``."""

    states: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # squeue's %r of waiting jobs
    sources: list[str] = field(default_factory=list)  # the commands that answered
    problems: list[str] = field(default_factory=list)
    note: str = ""  # why the queue was not asked, when it was not

    def state(self, job_id: str | None) -> str | None:
        return self.states.get(str(job_id)) if job_id else None

    def reason(self, job_id: str | None) -> str | None:
        """Why a queued job waits (squeue's reason: ``Resources``, ``Priority``,
        ``JobHeldUser``, ...), None when it does not wait or nobody said."""
        return self.reasons.get(str(job_id)) if job_id else None


def expand_job_id(text: str) -> list[str]:
    """``123_[1-3,7%2]`` -> ``123_1 123_2 123_3 123_7``; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]*)\]", text.strip())
    if not m:
        return [text.strip()]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (hi.isdigit() or not hi):
            out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_states(text: str) -> dict[str, str]:
    """``{job_id: state}`` from ``squeue --array --noheader --format=%i|%T|%r`` or
    ``sacct --parsable2 --noheader --allocations --format=JobID,State,...`` output (job steps
    such as ``123.batch`` skipped, ``CANCELLED by 0`` -> ``CANCELLED``, arrays expanded)."""
    out = {}
    for line in text.splitlines():
        cells = line.strip().split("|")
        if len(cells) < 2 or not cells[0] or "." in cells[0] or not cells[1].split():
            continue
        state = cells[1].split()[0].upper()
        if state != "STATE":
            out.update({jid: state for jid in expand_job_id(cells[0])})
    return out


parse_squeue = parse_sacct = parse_states

#: squeue's reason for a job that is not waiting for anything
NO_REASON = frozenset(("", "NONE", "(NULL)"))


def parse_reasons(text: str) -> dict[str, str]:
    """``{job_id: reason}`` of the queued jobs of ``squeue ... --format=%i|%T|%r`` output:
    why each pending job waits (``Resources``, ``Priority``, ``JobHeldUser``,
    ``Dependency``, ...); jobs without a reason are left out."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().split("|")]
        if len(cells) < 3 or not cells[0] or "." in cells[0] or not cells[1]:
            continue
        state, reason = cells[1].split()[0].upper(), cells[2]
        if state in SLURM_QUEUED and reason.upper() not in NO_REASON:
            out.update({jid: reason for jid in expand_job_id(cells[0])})
    return out


def make_queue(squeue: str | None = None, sacct: str | None = None,
               problems: Iterable[str] = ()) -> Queue:
    """A :class:`Queue` from command outputs (None: that command did not answer).

    ``squeue`` (the controller's own view) beats ``sacct``. When squeue answered, a job that
    sacct calls pending or running but squeue does not list is not believed: sacct's row of an
    array's pending tasks (``123_[4-9] PENDING``) still names a task cancelled while pending
    (seen on SLURM 22.05) until the next task starts; such a job has no state here."""
    states = parse_states(sacct) if sacct is not None else {}
    if squeue is not None:
        listed = parse_states(squeue)
        states = {j: s for j, s in states.items()
                  if j in listed or _CATEGORY.get(s) not in ("queued", "running")}
        states.update(listed)
    return Queue(states=states, reasons=parse_reasons(squeue) if squeue is not None else {},
                 problems=list(problems),
                 sources=[n for n, t in (("squeue", squeue), ("sacct", sacct)) if t is not None])


_CATEGORY = {**dict.fromkeys(SLURM_RUNNING, "running"), **dict.fromkeys(SLURM_QUEUED, "queued"),
             **dict.fromkeys(SLURM_DEAD, "dead"), "COMPLETED": "completed"}


def slurm_category(state: str | None) -> str | None:
    """``running``, ``queued``, ``dead``, ``completed`` or None (unknown / no state)."""
    return _CATEGORY.get(state or "")


def pick_job(candidates: Iterable[str], queue: Queue) -> str | None:
    """A running or pending job first, else the newest id."""
    ids = sorted({str(c) for c in candidates if c}, key=job_key, reverse=True)
    alive = [j for j in ids if slurm_category(queue.state(j)) in ("running", "queued")]
    return (alive or ids or [None])[0]


def submitit_jobs(sweep_dir: Path) -> dict[int, list[tuple[str, frozenset]]]:
    """``{grid index: [(job id, strings of the pickle)]}`` from
    ``.submitit/<job>/<job>_submitted.pkl`` (read as opcodes: nothing is unpickled)."""
    out: dict[int, list[tuple[str, frozenset]]] = {}
    root = Path(sweep_dir) / sweepdir.SUBMITIT_DIR
    if not root.is_dir():
        return out
    for pkl in sorted(root.glob("*/*_submitted.pkl")):
        try:
            strings = [arg for _, arg, _ in pickletools.genops(pkl.read_bytes())
                       if isinstance(arg, str)]
        except Exception:  # truncated or foreign: ignore, the manifests still map the job
            continue
        index = next((int(s[11:]) for s in strings if re.fullmatch(r"job_id_for_\d+", s)), None)
        if index is not None:
            out.setdefault(index, []).append((pkl.name[: -len("_submitted.pkl")],
                                              frozenset(strings)))
    return out


def job_key(job_id: str) -> tuple[int, ...]:
    """Sort key of a job id (``123_4`` -> ``(123, 4)``)."""
    return tuple(int(p) if p.isdigit() else -1 for p in str(job_id).split("_"))
