"""``python -m ptychostab.cli.status outputs/<sweep> [more sweep folders] [options]``.

A sweep's state, live (``make status EXP=...``): per arm, the runs counted in the status
families of docs/contracts.md (ok; instability by kind; other final; not final), and what they
do now (running, queued, dead, not started, stopped, done) with the running runs' epoch,
steps/s and ETA, the SLURM job beside each run (``squeue``/``sacct`` when on PATH), and the
sweep's ETA. It reads records and the queue only: no training code is imported (no torch, no
Lightning) and nothing is written into the sweep (:mod:`ptychostab.monitor.status`).

Options: ``--watch [SECONDS]`` (default 10) refreshes in place on a terminal (ANSI clear and
home) and prints repeated blocks otherwise (``--count N`` stops after N); ``--json`` prints the
document below (with ``--watch``: one document per line); ``--runs`` lists every run in the text
view (default: the running, queued and dead ones); ``--no-slurm`` skips the queue. Exit status
0, or 2 when a sweep folder does not exist (without ``--watch``).

JSON schema ``ptychostab.status/1`` (keys are stable; new keys may be added)::

    {"schema": "ptychostab.status/1", "generated_at": ISO-8601 UTC,
     "slurm": {"sources": ["squeue", "sacct"] (those that answered), "problems": [str],
               "note": str (why the queue was not asked, or ""), "job_states": int},
     "sweeps": [{"sweep": name, "path": str, "plan": bool (plan.csv found), "problems": [str],
                 "counts": COUNTS, "eta": ETA,
                 "arms": [{"arm_id": str, "label": str|null, "counts": COUNTS,
                           "running": [{"seed", "epoch" (0-based, = epochs_done),
                                        "epochs_done", "max_epochs", "steps_per_s", "eta_s",
                                        "slurm_job_id"}],
                           "runs": [RUN]}]}],
     "totals": {"counts": COUNTS, "eta": ETA}}   (over every sweep given)
    COUNTS = {"n_runs": int,
              "by_status": {every status of records.ALL_STATUSES: int},
              "by_family": {"ok", "instability", "other final", "not final": int},
              "live": {"done", "running", "queued", "dead", "not started", "stopped": int},
              "waiting": {reason: int} (queued runs by why their job waits, squeue's reason)}
    ETA = {"eta_s": float|null, "work_s": float, "runs_left": int,
           "runs_without_estimate": int, "parallelism": int, "per_run_s": float|null,
           "assumption": str}
    RUN = {"arm_id", "seed", "run_dir", "arm_label", "in_plan", "started", "status", "family",
           "live", "failure_kind", "cause" (infra), "problem", "epochs_done", "max_epochs",
           "global_step", "epoch_s", "steps_per_s", "eta_s" (running only),
           "lock": null | {"fresh", "stale_reason", "pid", "host", "slurm_job_id", "pack_id",
                           "start_time", "heartbeat_time"},
           "slurm_job_id": str|null, "slurm_state": str|null,
           "slurm_reason": str|null (queued: why its job waits, e.g. Resources, JobHeldUser)}

``status``/``family`` are the records' word (as the aggregator's), ``live`` is the moment's;
both counts sum to ``n_runs``. A queued run's job that waits for a reason (held, resources,
priority, dependency) says why: ``slurm_reason``, and the text view's ``queued N (waiting:
Resources 3, JobHeldUser 1)``. Times are seconds; unknown values are null.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable

from ptychostab.monitor import status as st
from ptychostab.monitor.slurm import Queue, make_queue
from ptychostab.runs import records

SQUEUE = ["squeue", "--array", "--noheader", "--format=%i|%T|%r"]
SACCT = ["sacct", "--parsable2", "--noheader", "--allocations", "--format=JobID,State,ExitCode"]
CLEAR = "\x1b[H\x1b[2J"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ptychostab.cli.status",
                                description="The live state of sweep folders (reads only).")
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (outputs/<sweep>)")
    p.add_argument("--watch", nargs="?", type=float, const=10.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) until Ctrl-C")
    p.add_argument("--count", type=int, default=None, help="with --watch: stop after N views")
    p.add_argument("--json", action="store_true", help="print the JSON document (schema above)")
    p.add_argument("--runs", action="store_true", help="text view: list every run")
    p.add_argument("--no-slurm", action="store_true", help="do not ask squeue/sacct")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per SLURM command")
    return p.parse_args(argv)


# --- the queue --------------------------------------------------------------------------------
def query_queue(job_ids: list[str], *, timeout: float = 15.0,
                which: Callable[[str], str | None] = shutil.which,
                run: Callable = subprocess.run) -> Queue:
    """Ask ``squeue`` and ``sacct`` about ``job_ids`` (base ids); never raises."""
    if not job_ids:
        return Queue(note="no SLURM job recorded in these sweeps")
    commands = {"squeue": SQUEUE, "sacct": [*SACCT, f"--jobs={','.join(job_ids)}"]}
    found = [name for name in commands if which(name)]
    if not found:
        return Queue(note="no squeue/sacct on PATH")
    texts: dict[str, str] = {}
    problems = []
    for name in found:
        try:
            res = run(commands[name], capture_output=True, text=True, timeout=timeout,
                      check=False)
        except (OSError, subprocess.SubprocessError) as err:
            problems.append(f"{name}: {err}")
            continue
        if res.returncode != 0:
            problems.append(f"{name} exited {res.returncode}: {(res.stderr or '').strip()[:200]}")
            continue
        texts[name] = res.stdout or ""
    wanted = set(job_ids)
    if "squeue" in texts:  # every job of the cluster: keep those of these sweeps
        texts["squeue"] = "\n".join(line for line in texts["squeue"].splitlines()
                                    if line.split("|")[0].split("_")[0].strip() in wanted)
    return make_queue(texts.get("squeue"), texts.get("sacct"), problems)


def build(sweeps: list[Path], *, now: float, slurm: bool = True, timeout: float = 15.0,
          query: Callable[..., Queue] = query_queue) -> dict:
    """The status document of ``sweeps`` at time ``now``."""
    unique = list(dict.fromkeys(Path(p).resolve() for p in sweeps))  # each folder once
    states = [st.read_sweep(p, now=now) for p in unique]
    queue = (query(st.known_jobs(states), timeout=timeout) if slurm
             else Queue(note="not asked (--no-slurm)"))
    for state in states:
        st.apply_queue(state, queue)
    return st.snapshot(states, queue, now=now)


# --- text -------------------------------------------------------------------------------------
def duration(seconds: float | None) -> str:
    """``45s``, ``12m30s``, ``3h05m``, ``2d04h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _families(counts: dict, runs: list[dict]) -> str:
    """``ok 3 | instability 2 (nonfinite 2) | other final 0 | not final 4 (missing 4)``."""
    parts = []
    for fam in st.FAMILY_NAMES:
        kinds = [(s, n) for s, n in counts["by_status"].items()
                 if n and records.family(s) == fam and s != fam]
        inner = []
        for s, n in kinds:
            causes = sorted({r["cause"] for r in runs if r["status"] == s and r["cause"]})
            inner.append(f"{s} {n}" + (f" [{', '.join(causes)}]" if causes else ""))
        parts.append(f"{fam} {counts['by_family'][fam]}" + (f" ({', '.join(inner)})"
                                                            if inner else ""))
    return " | ".join(parts)


def _live(counts: dict) -> str:
    """``now: done 3 · queued 4 (Resources 3, JobHeldUser 1) · running 1``."""
    if not counts["n_runs"]:
        return "now: no runs"
    why = ", ".join(f"{r} {n}" for r, n in (counts.get("waiting") or {}).items())
    return "now: " + " · ".join(f"{k} {n}" + (f" (waiting: {why})" if k == "queued" and why
                                               else "")
                                for k, n in counts["live"].items() if n)


def _run_line(r: dict) -> str:
    text = f"seed={r['seed']:<4} {r['live']:<11}"
    if r["live"] == "running":
        epoch = r["epochs_done"] + 1 if r["max_epochs"] is None else min(
            r["epochs_done"] + 1, r["max_epochs"])
        rate = f"{r['steps_per_s']:.1f} steps/s" if r["steps_per_s"] else "? steps/s"
        text += f" epoch {epoch}/{r['max_epochs'] or '?'}  {rate}  ETA {duration(r['eta_s'])}"
    else:
        text += f" {r['status']}" + (f" ({r['problem'][:80]})" if r["problem"] else "")
    if r["slurm_job_id"]:
        why = f", waiting: {r['slurm_reason']}" if r.get("slurm_reason") else ""
        text += f"  [SLURM {r['slurm_job_id']} {r['slurm_state'] or '?'}{why}]"
    elif r["lock"] and r["live"] == "running":
        text += f"  [pid {r['lock']['pid']} on {r['lock']['host']}]"
    return text


def _eta_line(eta: dict) -> str:
    if not eta["runs_left"]:
        return "ETA: nothing left to run"
    unknown = eta["runs_without_estimate"]
    return (f"ETA {duration(eta['eta_s'])}: {eta['runs_left']} run(s) left, "
            f"{duration(eta['work_s'])} of work, {eta['parallelism']} in parallel (the runs "
            f"running now), ~{duration(eta['per_run_s'])} per run"
            + (f"; {unknown} run(s) without estimate" if unknown else ""))


def render(doc: dict, *, every_run: bool = False) -> str:
    """The text view of a status document."""
    lines = []
    for sw in doc["sweeps"]:
        every = [r for a in sw["arms"] for r in a["runs"]]
        lines.append(f"sweep {sw['sweep']}  {sw['path']}  {sw['counts']['n_runs']} run(s)"
                     + ("" if sw["plan"] else "  (no plan.csv: the run folders found)"))
        lines += [f"  ! {p}" for p in sw["problems"]]
        lines += [f"  {_families(sw['counts'], every)}", f"  {_live(sw['counts'])}"]
        for arm in sw["arms"]:
            lines.append(f"  arm {arm['arm_id']}  {arm['label'] or ''}  "
                         f"({arm['counts']['n_runs']} run(s))")
            lines += [f"    {_families(arm['counts'], arm['runs'])}",
                      f"    {_live(arm['counts'])}"]
            shown = [r for r in arm["runs"]
                     if every_run or r["live"] in ("running", "queued", "dead")]
            lines += [f"      {_run_line(r)}" for r in shown]
        lines.append(f"  {_eta_line(sw['eta'])}")
    if len(doc["sweeps"]) > 1:
        tot = doc["totals"]
        lines.append(f"all sweeps: {tot['counts']['n_runs']} run(s); "
                     f"{_families(tot['counts'], [])}; {_live(tot['counts'])}; "
                     f"{_eta_line(tot['eta'])}")
    slurm = doc["slurm"]
    lines.append("SLURM: " + (f"{', '.join(slurm['sources'])} ({slurm['job_states']} job "
                              f"state(s))" if slurm["sources"] else slurm["note"] or "no answer")
                 + "".join(f"; {p}" for p in slurm["problems"]))
    lines.append(f"ETA assumption: {st.ASSUMPTION}")
    lines.append(f"as of {doc['generated_at']}")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, *, out: IO[str] | None = None,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
         query: Callable[..., Queue] = query_queue) -> int:
    """Print the status (once, or every ``--watch`` seconds); returns the exit status."""
    args = parse_args(argv)
    out = out or sys.stdout
    missing = [p for p in args.sweeps if not p.is_dir()]
    if missing and args.watch is None:
        print(f"no such sweep folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    tty = hasattr(out, "isatty") and out.isatty()
    shown = 0
    try:
        while True:
            doc = build(args.sweeps, now=clock(), slurm=not args.no_slurm,
                        timeout=args.timeout, query=query)
            if args.json:
                text = json.dumps(doc, indent=None if args.watch is not None else 2)
            else:
                text = render(doc, every_run=args.runs)
            if args.watch is not None and tty and not args.json:
                out.write(CLEAR)  # refresh in place
            elif shown and not args.json:
                out.write("\n")  # not a terminal: plain repeated blocks
            out.write(text + "\n")
            out.flush()
            shown += 1
            if args.watch is None or (args.count is not None and shown >= args.count):
                return 0
            sleep(max(args.watch, 0.0))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
