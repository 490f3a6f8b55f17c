"""``<sweep>/submitted.json``: which job of which launch trains each run folder.

The submitit launchers (``hydra_plugins.ptychostab_launcher``) write it right after each
submission, under the sweep lock; a rerun of the sweep reads it to recognise the jobs of an
earlier launch that are still queued or running (:func:`ptychostab.launch.job_wait.find_alive`)
and waits for them instead of submitting their runs again; the status view reads it to find
the SLURM job of a run that has not started yet. Pure Python (no Hydra, no submitit)::

    {"schema_version": 1, "sweep": "stage_a",
     "runs": {"<arm_id>/seed=<k>": {"job_id": "123_4", "backend": "slurm" | "local",
                                   "host": str, "pid": int | null, "pid_start": str | null,
                                   "leader": "<arm_id>/seed=<j>", "submitted_at": ISO-8601}}}

``job_id`` is SLURM's (``<array>_<task>``) or, for ``submitit_local``, the pid of submitit's
controller process (``pid`` / ``pid_start``, :func:`ptychostab.runs.lock.process_start`, tell
it from a later process with the same pid). A pack's members carry their leader's job. A new
submission of a run replaces its entry; entries of other runs stay.
"""

from __future__ import annotations

import datetime as _dt
import socket
from pathlib import Path
from typing import Any, Iterable

from ptychostab.analysis.sweepdir import (  # noqa: F401  (the launch side's API)
    SUBMITTED_JSON,
)
from ptychostab.analysis.sweepdir import (
    read_submitted as read,
)
from ptychostab.analysis.sweepdir import (
    run_key as rel,
)
from ptychostab.runs import records

SCHEMA_VERSION = 1


def record(sweep_dir: Path, sweep: str, entries: Iterable[tuple[Path, Path, str]], *,
           backend: str, pids: dict[str, tuple[int | None, str | None]] | None = None) -> Path:
    """Add entries to ``submitted.json`` (an atomic rewrite; other runs' entries stay).

    Parameters
    ----------
    sweep_dir : Path
        The sweep folder.
    sweep : str
        The sweep's name.
    entries : iterable of (Path, Path, str)
        ``(run folder, its leader's run folder, job id)``; a run's earlier entry is replaced.
    backend : {"slurm", "local"}
        The submitit executor.
    pids : dict, optional
        ``{job id: (pid, pid_start)}`` of ``submitit_local`` controller processes.

    Returns
    -------
    Path
        The file written.
    """
    sweep_dir = Path(sweep_dir)
    runs: dict[str, Any] = read(sweep_dir)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    host = socket.gethostname()
    for run_dir, leader, job_id in entries:
        pid, start = (pids or {}).get(str(job_id), (None, None))
        runs[rel(sweep_dir, run_dir)] = {
            "job_id": str(job_id), "backend": backend, "host": host, "pid": pid,
            "pid_start": start, "leader": rel(sweep_dir, leader), "submitted_at": now}
    path = sweep_dir / SUBMITTED_JSON
    records.atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "sweep": sweep,
                                     "runs": dict(sorted(runs.items()))})
    return path
