"""The chaos sweep (issue 20), on the local SLURM cluster (marker ``slurm``; ``make slurm-up``).

Twelve tiny jobs run as one array, two at a time. While they run, the test (seeded, every
injection logged to ``chaos.log`` and printed) cancels a pending task, cancels a running one,
kills one job's Python with SIGKILL, sends SIGTERM to another's, and sets the node DOWN and
back (the jobs it killed are requeued by SLURM; the test makes them eligible at once instead of
SLURM's two-minute requeue delay). Then:

- the launcher returns (exit 0) within a bound, with its summary line;
- every planned run has a record in the right family: ``ok``, or not final (``missing`` for
  the task cancelled while pending, never started: no result.json); none counted as
  instability or as another final ending (exception, oom);
- the aggregator (``python -m ptychostab.cli.aggregate``) and ``python -m
  ptychostab.cli.status --json`` say what the records say, run by run;
- a rerun of the same command ends every run ``ok``, leaves the untouched runs alone (their
  result.json byte for byte, not resubmitted), and each resumed run's history holds every
  epoch exactly once.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptychostab.config import REPO_ROOT
from ptychostab.launch import submitted
from ptychostab.runs import records

SEED = int(os.environ.get("PTYCHOSTAB_CHAOS_SEED", "20"))
N_JOBS, EPOCHS = 12, 20
LAUNCH_BOUND_S = 420  # the first launch, faults and SLURM's requeue included
RERUN_BOUND_S = 300
CLUSTER = ["launcher=slurm", "cluster.gpus_per_node=null", "cluster.cpus_per_task=1",
           "cluster.mem_gb=null", "cluster.timeout_min=20", "cluster.signal_delay_s=30",
           "cluster.poll_interval_s=2", "cluster.lost_job_grace_s=20"]
# tiny and quick (~0.4 s an epoch); the collapse bounds off: a 20-epoch toy run must end ok
RUN = [f"seed=range({N_JOBS})", "sweep=chaos", "data=tiny", "data.size=64", "trainer=smoke",
       f"trainer.max_epochs={EPOCHS}", "arch.hidden_channels=4", "arch.n_modes=4",
       "failure.collapse_ssim=null", "failure.collapse_rel_std=null"]
NOT_FINAL = {s for s, fam in records.FAMILIES.items() if fam == "not final"}


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "alloc"))


pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (make slurm-up)")]


def _train(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "train.py", "-m", *CLUSTER, *RUN,
                             f"paths.output_root={out}"], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _queue(array: str) -> dict[str, tuple[str, str]]:
    """``{task id: (state, reason)}`` of the array's tasks SLURM still holds."""
    res = subprocess.run(["squeue", "--array", "--noheader", "--states=all", f"--jobs={array}",
                          "--format=%i|%T|%r"], capture_output=True, text=True)
    out = {}
    for line in res.stdout.splitlines():
        cells = line.strip().split("|")
        if len(cells) == 3:
            out[cells[0]] = (cells[1], cells[2])
    return out


def _rows(run_dir: Path) -> int:
    return len(records.read_history(run_dir / records.HISTORY).data or [])


def _raw_job_id(run_dir: Path) -> str | None:
    """SLURM_JOB_ID of the run's current segment (what ``scontrol listpids`` takes)."""
    return ((records.read_json(run_dir / records.MANIFEST).data or {}).get("slurm")
            or {}).get("SLURM_JOB_ID")


def _pythons(raw_job_id: str) -> list[int]:
    res = subprocess.run(["scontrol", "listpids", raw_job_id], capture_output=True, text=True)
    pids = []
    for line in res.stdout.splitlines()[1:]:
        try:
            pid = int(line.split()[0])
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("python"):
                pids.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return pids


class Chaos:
    """The seeded fault injector: every injection is logged (chaos.log and stdout)."""

    def __init__(self, sweep_dir: Path, log_path: Path, seed: int):
        self.sweep_dir, self.log_path = sweep_dir, log_path
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.targeted: dict[str, str] = {}  # run folder (relative) -> fault
        self.tasks: dict[str, str] = {}  # fault -> SLURM task
        self.done: list[str] = []
        self.log(f"seed {seed}")

    def log(self, text: str) -> None:
        line = f"[chaos +{time.monotonic() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        with open(self.log_path, "a") as fh:
            fh.write(line + "\n")

    def jobs(self) -> dict[str, str]:
        """``{task id: run folder (relative)}`` from the launcher's submitted.json."""
        return {e["job_id"]: rel for rel, e in submitted.read(self.sweep_dir).items()}

    def training(self, queue: dict) -> list[tuple[str, str]]:
        """(task, run) pairs running, past their first epoch, not yet hit."""
        return sorted((task, rel) for task, rel in self.jobs().items()
                      if queue.get(task, ("",))[0] == "RUNNING" and rel not in self.targeted
                      and _rows(self.sweep_dir / rel) >= 1)

    def hit(self, fault: str, task: str, rel: str, how: str) -> None:
        self.targeted[rel] = fault
        self.tasks[fault] = task
        self.done.append(fault)
        self.log(f"{fault}: SLURM task {task}, run {rel}: {how}")

    def step(self, array: str) -> bool:
        """One look at the queue and at most one round of faults; True when all are done."""
        queue = _queue(array)
        jobs = self.jobs()
        if "cancel-pending" not in self.done:
            pending = sorted((t for t, (s, _) in queue.items() if s == "PENDING"
                              and t in jobs), key=lambda t: int(t.split("_")[1]))
            if len(pending) >= 4:
                task = self.rng.choice(pending[2:])
                subprocess.run(["scancel", task], check=True)
                self.hit("cancel-pending", task, jobs[task], "scancel while PENDING")
            return False
        running = self.training(queue)
        if "cancel-running" not in self.done:
            if len(running) >= 2:
                (a, ra), (b, rb) = self.rng.sample(running, 2)
                subprocess.run(["scancel", a], check=True)
                self.hit("cancel-running", a, ra, "scancel while RUNNING")
                pids = _pythons(_raw_job_id(self.sweep_dir / rb) or "")
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                self.hit("sigkill", b, rb, f"SIGKILL to its Python processes {pids}")
            return False
        if "sigterm" not in self.done:
            if running:
                task, rel = self.rng.choice(running)
                pids = _pythons(_raw_job_id(self.sweep_dir / rel) or "")
                for pid in pids:
                    os.kill(pid, signal.SIGTERM)
                self.hit("sigterm", task, rel, f"SIGTERM to its Python processes {pids}")
            return False
        if "node-down" not in self.done:
            if running:
                task, rel = self.rng.choice(running)
                node = socket.gethostname().split(".")[0]
                subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                                "reason=chaos"], check=True)
                self.hit("node-down", task, rel, f"scontrol update nodename={node} state=down "
                         f"(every job running on it is killed and requeued)")
                time.sleep(2)
                back = subprocess.run(["scontrol", "update", f"nodename={node}",
                                       "state=resume"], capture_output=True, text=True)
                self.log(f"node-up: scontrol update nodename={node} state=resume: "
                         f"{(back.stderr or 'ok').strip()} (ReturnToService=2 may have "
                         f"returned it already)")
            return False
        requeued = [t for t, (s, r) in _queue(array).items() if s == "PENDING"
                    and r == "BeginTime"]
        for task in requeued:  # SLURM's requeue delay (2 min): eligible now, as an admin may
            subprocess.run(["scontrol", "update", f"jobid={task}", "starttime=now"],
                           check=False)
            self.log(f"requeued task {task} ({self.jobs().get(task)}) made eligible now")
        return True


def _status_of(run_dir: Path) -> str:
    loaded = records.read_json(run_dir / records.RESULT)
    if loaded.problem == "absent":
        return "missing"
    return loaded.data.get("status") if loaded.ok else "corrupt"


def _record_view(sweep_dir: Path, planned: list[Path]) -> dict[str, str]:
    return {submitted.rel(sweep_dir, d): _status_of(d) for d in planned}


def _aggregated(sweep_dir: Path, out: Path) -> dict[str, str]:
    import csv

    res = subprocess.run([sys.executable, "-m", "ptychostab.cli.aggregate", str(sweep_dir),
                          "--out", str(out), "--no-plots"], cwd=REPO_ROOT, text=True,
                         capture_output=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out / "runs.csv", newline="") as fh:
        return {f"{r['arm_id']}/seed={r['seed']}": r["status"] for r in csv.DictReader(fh)}


def _status_view(sweep_dir: Path) -> tuple[dict[str, str], dict]:
    res = subprocess.run([sys.executable, "-m", "ptychostab.cli.status", str(sweep_dir),
                          "--json"], cwd=REPO_ROOT, text=True, capture_output=True)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    (sweep,) = doc["sweeps"]
    runs = {f"{r['arm_id']}/seed={r['seed']}": r["status"] for a in sweep["arms"]
            for r in a["runs"]}
    return runs, sweep["counts"]


def _cancel_all(sweep_dir: Path) -> None:
    ids = sorted({e["job_id"].split("_")[0] for e in submitted.read(sweep_dir).values()})
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def test_chaos_sweep_ends_records_every_run_and_a_rerun_finishes_it(tmp_path):
    sweep_dir = tmp_path / "chaos"
    chaos = Chaos(sweep_dir, tmp_path / "chaos.log", SEED)
    t0 = time.monotonic()
    proc = _train(tmp_path)
    try:
        array = None
        while time.monotonic() - t0 < LAUNCH_BOUND_S and proc.poll() is None:
            if array is None:
                ids = {e["job_id"].split("_")[0]
                       for e in submitted.read(sweep_dir).values()}
                array = next(iter(ids), None)
            if array is not None and chaos.step(array):
                break
            time.sleep(0.5)
        assert sorted(chaos.done) == sorted(["cancel-pending", "cancel-running", "sigkill",
                                             "sigterm", "node-down"]), chaos.done
        out, _ = proc.communicate(timeout=max(LAUNCH_BOUND_S - (time.monotonic() - t0), 1))
        launch_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            _cancel_all(sweep_dir)
        node = socket.gethostname().split(".")[0]
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                       capture_output=True)
    (tmp_path / "launch-1.log").write_text(out)
    chaos.log(f"first launch returned in {launch_s:.0f} s (exit {proc.returncode}): "
              + next((line for line in out.splitlines() if "of this launch are over" in line),
                     "no summary line"))
    assert proc.returncode == 0, out[-6000:]
    assert launch_s < LAUNCH_BOUND_S
    assert f"All {N_JOBS} job(s) of this launch are over" in out, out[-4000:]
    # the hang: the task cancelled while pending has no accounting row; it is over
    # once SLURM has not known it for the grace period, and stays missing
    assert re.search(rf"job {chaos.tasks['cancel-pending']} \(\S+\) ended without a result "
                     rf"\(unknown to the scheduler for \d+ s\): recorded as missing", out), out
    log_text = (tmp_path / "chaos.log").read_text()
    for fault in ("cancel-pending", "cancel-running", "sigkill", "sigterm", "node-down"):
        assert f"{fault}: SLURM task" in log_text  # the log names every injection

    # every planned run has a record in the right family
    planned = [sweep_dir / rel for rel in submitted.read(sweep_dir)]
    assert len(planned) == N_JOBS
    records_now = _record_view(sweep_dir, planned)
    chaos.log(f"records after the first launch: {records_now}")
    for rel, status in records_now.items():
        assert status == "ok" or status in NOT_FINAL, (rel, status)
    by_fault = {fault: rel for rel, fault in chaos.targeted.items()}
    assert records_now[by_fault["cancel-pending"]] == "missing"
    assert not (sweep_dir / by_fault["cancel-pending"] / records.MANIFEST).exists()
    killed = json.loads((sweep_dir / by_fault["sigkill"] / records.RESULT).read_text())
    assert killed["status"] == "preempted" and killed["recorded_by"] == "launcher"
    assert records_now[by_fault["cancel-running"]] in NOT_FINAL
    untouched = {rel for rel in records_now if rel not in chaos.targeted}
    assert all(records_now[rel] == "ok" for rel in untouched)

    # the aggregator and the status view agree with the records
    assert _aggregated(sweep_dir, tmp_path / "agg") == records_now
    status_runs, counts = _status_view(sweep_dir)
    assert status_runs == records_now
    assert counts["by_family"]["instability"] == counts["by_family"]["other final"] == 0
    assert counts["by_family"]["ok"] == sum(s == "ok" for s in records_now.values())

    # the rerun finishes every run, leaves the finished ones alone
    ok_before = {rel: (sweep_dir / rel / records.RESULT).read_bytes()
                 for rel, s in records_now.items() if s == "ok"}
    t1 = time.monotonic()
    proc = _train(tmp_path)
    try:
        out, _ = proc.communicate(timeout=RERUN_BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            _cancel_all(sweep_dir)
    (tmp_path / "launch-2.log").write_text(out)
    chaos.log(f"rerun returned in {time.monotonic() - t1:.0f} s (exit {proc.returncode}); "
              f"chaos test total {time.monotonic() - t0:.0f} s")
    assert proc.returncode == 0, out[-6000:]
    assert f"Skipping {len(ok_before)} run(s) with a final result.json" in out
    # the rest: submitted again, or (a job SLURM requeued after it had returned, e.g. by the
    # node failure) recognised in the queue and waited for; never both, never more
    counts = [int(m.group(1)) if m else 0 for m in (
        re.search(r"Submitted (\d+) job\(s\)", out), re.search(r"Recognised (\d+) run", out))]
    assert sum(counts) == N_JOBS - len(ok_before), (counts, out[-4000:])
    after = _record_view(sweep_dir, planned)
    assert set(after.values()) == {"ok"}, after
    for rel, content in ok_before.items():  # not retrained, not rewritten
        assert (sweep_dir / rel / records.RESULT).read_bytes() == content, rel
    for rel in records_now:
        epochs = [int(r["epoch"]) for r in
                  records.read_history(sweep_dir / rel / records.HISTORY).data]
        assert epochs == list(range(EPOCHS)), (rel, chaos.targeted.get(rel), epochs)
    resumed = [rel for rel, s in records_now.items() if s != "ok" and s != "missing"]
    for rel in resumed:  # resumed from its checkpoint, not trained again from scratch
        manifest = json.loads((sweep_dir / rel / records.MANIFEST).read_text())
        assert any(seg.get("resumed_from") for seg in manifest["segments"][1:]), rel
    assert _aggregated(sweep_dir, tmp_path / "agg2") == after
    assert _status_view(sweep_dir)[0] == after
