"""The launcher's wait always ends (issue 20, "No wait without an end"), and stopping it is
safe: fake submitit jobs and a scripted scheduler, no cluster, a few seconds in all.

- a job whose state stays UNKNOWN (or that no queue lists) is over after the grace period,
  counted from its first such reading: the launcher returns within the grace period plus one
  poll interval; ``missing`` if it never started (no result.json), else ``preempted``;
- a failed ``squeue``/``sacct`` call is not "absent": the grace period does not advance;
- a job pending for a reason (held) is waited for, past any grace period;
- ``submitit_local``: a job process gone without a result is over at once;
- SIGTERM/SIGINT to the launcher ends it promptly, releases the sweep lock and says what
  still runs and how to resume; a rerun recognises the jobs of the earlier launch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections import OrderedDict
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.ptychostab_launcher.launcher import (
    LauncherStopped,
    PtychoLocalLauncher,
    PtychoSlurmLauncher,
)
from ptychostab.launch import job_wait, preflight, submitted
from ptychostab.launch.job_wait import Reading, Tracked, Waiter
from ptychostab.launch.plan import Plan, PlannedArm, PlannedJob
from ptychostab.launch.sweep_lock import SweepLock, SweepLocked
from ptychostab.runs import records

GRACE, POLL = 2.0, 0.5


# --- doubles -------------------------------------------------------------------------------------
def make_plan(tmp_path: Path, n: int, sweep: str = "s") -> Plan:
    sweep_dir = tmp_path / sweep
    jobs = [PlannedJob(index=i, overrides=[f"seed={i}"], seed=i, arm_id="arm",
                       run_dir=sweep_dir / "arm" / f"seed={i}", status="todo")
            for i in range(n)]
    arms = OrderedDict(arm=PlannedArm(arm_id="arm", label="arm", fields={}, cfg={}))
    return Plan(sweep=sweep, sweep_dir=sweep_dir, jobs=jobs, arms=arms, settings={})


def start_run(run_dir: Path, epochs: int = 1) -> None:
    """A run that started (manifest) and trained ``epochs`` epochs, without a result."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(run_dir / records.MANIFEST, {
        "schema_version": records.SCHEMA_VERSION, "sweep": "s", "arm_id": "arm", "seed": 0})
    if epochs:
        records.write_history(run_dir / records.HISTORY, [
            {"epoch": e, "global_step": 10 * (e + 1), "train_loss": 1.0, "val_loss": 1.0,
             "lr": 1e-3, "wall_s": 1.0 * (e + 1)} for e in range(epochs)])


class Job:
    """A submitit job double: a result file appears when :meth:`finish` is called."""

    def __init__(self, job_id: str, folder: Path, overrides: list[str]):
        self.job_id = job_id
        self.paths = types.SimpleNamespace(result_pickle=folder / f"{job_id}_0_result.pkl")
        self.overrides = overrides

    def finish(self) -> None:
        self.paths.result_pickle.write_bytes(b"")

    def results(self):
        ret = JobReturn(overrides=self.overrides, status=JobStatus.COMPLETED)
        ret.return_value = "trained"
        return [ret]


class Scripted:
    """The scheduler's answers: ``script(call_number, jobs)`` returns the Reading of a poll."""

    result_wait_s = 0.0

    def __init__(self, script):
        self.script, self.calls, self.jobs = script, 0, []

    def read(self, tracked):
        self.calls += 1
        return self.script(self.calls, self.jobs)

    def read_ids(self, ids):
        return self.read([])


class Executor:
    def __init__(self, reader, folder: Path):
        self.queue_reader, self.folder, self.submitted = reader, folder, []

    def map_array(self, fn, overrides, *rest):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.submitted = [list(o) for o in overrides]
        jobs = [Job(f"90_{i}", self.folder, list(o)) for i, o in enumerate(overrides)]
        self.queue_reader.jobs = jobs
        return jobs


def make_launcher(cls, plan: Plan, reader, monkeypatch, *, grace=GRACE, poll=POLL):
    launcher = cls(submitit_folder=str(plan.sweep_dir / ".submitit" / "%j"),
                   lost_job_grace_s=grace, poll_interval_s=poll)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(plan.sweep_dir)}}})
    executor = Executor(reader, plan.sweep_dir / ".submitit" / "fake")
    monkeypatch.setattr(launcher, "_executor", lambda submitit: executor)
    monkeypatch.setitem(preflight._STATE, "plan", plan)
    monkeypatch.setitem(preflight._STATE, "alive", {})
    return launcher, executor


def launch_within(launcher, overrides: list[list[str]], seconds: float) -> list:
    """``launcher.launch`` in a thread: a wait that does not end fails the test (after
    ``seconds``) instead of hanging the suite."""
    out: dict = {}

    def target():
        try:
            out["returns"] = launcher.launch(overrides, initial_job_idx=0)
        except BaseException as err:  # noqa: BLE001  (re-raised in the test's thread)
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the launcher did not return within {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["returns"]


def status_of(run_dir: Path) -> str | None:
    loaded = records.read_json(run_dir / records.RESULT)
    return loaded.data.get("status") if loaded.ok else None


# --- the grace period ----------------------------------------------------------------------------
@pytest.mark.parametrize("states", [{}, {"90_0": "UNKNOWN", "90_1": "UNKNOWN"}],
                         ids=["in-no-queue", "UNKNOWN"])
def test_a_job_unknown_to_the_scheduler_is_over_after_the_grace_period(
        tmp_path, monkeypatch, caplog, states):
    """The issue's hang: a pending array task cancelled before it was split off reads UNKNOWN
    (or is in neither squeue nor sacct) forever. The launcher returns within the grace period
    plus one poll interval: the started run is preempted, the other stays missing."""
    plan = make_plan(tmp_path, 2)
    start_run(plan.jobs[0].run_dir, epochs=2)
    reader = Scripted(lambda n, jobs: Reading(ok=True, states=dict(states)))
    launcher, executor = make_launcher(PtychoSlurmLauncher, plan, reader, monkeypatch)
    caplog.set_level(logging.INFO)
    t0 = time.monotonic()
    returns = launch_within(launcher, [j.overrides for j in plan.jobs], GRACE + POLL + 5)
    elapsed = time.monotonic() - t0
    assert GRACE <= elapsed < GRACE + POLL, elapsed
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2  # the sweep completes
    assert status_of(plan.jobs[0].run_dir) == "preempted"
    result = json.loads((plan.jobs[0].run_dir / records.RESULT).read_text())
    assert result["recorded_by"] == "launcher" and result["epochs_completed"] == 2
    assert "lost_job_grace_s" in result["failure"]["message"]
    assert not (plan.jobs[1].run_dir / records.RESULT).exists()  # missing: nothing written
    assert "recorded as missing" in returns[1].return_value
    line = next(r.getMessage() for r in caplog.records if "job(s) of this launch are over"
                in r.getMessage())
    assert "1 killed without a result (recorded as preempted 1" in line
    assert "1 never started (missing" in line and "seed=1" in line


def test_grace_is_counted_from_the_first_unknown_reading_and_reset_by_a_known_state():
    clock = FakeClock()
    t = Tracked(index=0, overrides=[], job_id="5_1")
    w = Waiter([t], Scripted(None), grace_s=10, poll_s=1, clock=clock)
    w.observe(t, None, None, clock.now)  # first such reading: the clock starts here
    clock.now += 9.9
    w.observe(t, "UNKNOWN", None, clock.now)
    assert t.over is None and t.unknown_s == pytest.approx(9.9)
    w.observe(t, "RUNNING", None, clock.now)  # known again: starts over
    assert t.unknown_s == 0
    clock.now += 1
    w.observe(t, None, None, clock.now)
    clock.now += 10
    w.observe(t, None, None, clock.now)
    assert t.over == "UNKNOWN" and t.lost


# --- failed scheduler calls ----------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_a_failed_queue_call_does_not_advance_the_grace_period():
    """Polls: absent, then the queue fails for 3 x the grace period, then absent again: the
    time across the failures is not counted, so the job is not over yet; two answered polls
    later it is."""
    clock = FakeClock()
    answers = iter([Reading(ok=True)] + [Reading(ok=False, problem="squeue exited 1")] * 30
                   + [Reading(ok=True)] * 12)
    reader = types.SimpleNamespace(read=lambda tracked: next(answers), result_wait_s=0.0)
    t = Tracked(index=0, overrides=[], job_id="5_1")
    w = Waiter([t], reader, grace_s=1.0, poll_s=0.1, clock=clock, sleep=clock.sleep)
    for _ in range(31):  # 1 answered + 30 failed polls, 0.1 s apart: 3 s
        w.poll()
        clock.sleep(0.1)
    assert t.over is None and t.unknown_s == 0 and w.failed_polls == 30
    for _ in range(10):  # answered again: 0.9 s counted from the first of them
        w.poll()
        clock.sleep(0.1)
    assert t.over is None and t.unknown_s == pytest.approx(0.9)
    w.poll()
    w.poll()
    assert t.over is not None and t.lost and 1.0 <= t.unknown_s < 1.2


def test_a_launcher_whose_queue_fails_waits_and_takes_the_result(tmp_path, monkeypatch):
    """squeue fails for twice the grace period, then says RUNNING; the job then returns: its
    own result, not a killed record."""
    plan = make_plan(tmp_path, 1)
    start_run(plan.jobs[0].run_dir)

    def script(n, jobs):
        if n <= 10:  # 10 x 0.2 s = 2 s of failures, grace 1 s
            return Reading(ok=False, problem="squeue: error: slurm_load_jobs: timeout")
        if n == 12:
            jobs[0].finish()
        return Reading(ok=True, states={"90_0": "RUNNING"})

    reader = Scripted(script)
    launcher, _ = make_launcher(PtychoSlurmLauncher, plan, reader, monkeypatch, grace=1.0,
                                poll=0.2)
    (ret,) = launch_within(launcher, [plan.jobs[0].overrides], 30)
    assert ret.return_value == "trained"
    assert not (plan.jobs[0].run_dir / records.RESULT).exists()


def test_sacct_pending_row_does_not_keep_a_cancelled_pending_task_alive():
    """Seen on SLURM 22.05: after ``scancel 5_2`` of a pending task squeue no longer lists it,
    but sacct's row of the array's pending tasks still reads ``5_[1-3] PENDING``."""
    squeue = "5_1|PENDING|Resources\n5_3|PENDING|Resources\n5_0|RUNNING|None\n"
    sacct = "5_0|RUNNING\n5_[1-3]|PENDING\n4_0|COMPLETED\n"
    reading = job_wait.reading_of(squeue, sacct)
    assert reading.state("5_2") is None  # unknown: the grace period decides
    assert reading.state("5_1") == "PENDING" and reading.reason("5_1") == "Resources"
    assert reading.state("4_0") == "COMPLETED"  # gone from squeue, ended in sacct: believed


def test_slurm_reader_fails_on_a_failed_call_and_reads_without_sacct_when_accounting_is_off():
    """A failed squeue or sacct call (exit status, time-out) fails the whole reading; sacct on
    a cluster without accounting is left out for good."""
    calls = []

    def run(cmd, **kw):
        calls.append(cmd[0])
        if cmd[0] == "squeue" and mode["squeue"] == "down":
            return types.SimpleNamespace(returncode=1, stdout="",
                                         stderr="slurm_load_jobs error: Socket timed out")
        if cmd[0] == "squeue" and mode["squeue"] == "slow":
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        if cmd[0] == "sacct" and mode["sacct"] == "down":
            return types.SimpleNamespace(returncode=1, stdout="", stderr="slurmdbd: timeout")
        if cmd[0] == "sacct" and mode["sacct"] == "off":
            return types.SimpleNamespace(
                returncode=1, stdout="",
                stderr="sacct: error: Slurm accounting storage is disabled")
        return types.SimpleNamespace(returncode=0, stdout="7_0|RUNNING|None\n8_0|RUNNING|x\n",
                                     stderr="")

    mode = {"sacct": "down", "squeue": "ok"}
    reader = job_wait.SlurmReader(run=run, which=lambda n: n, user="me")
    assert not reader.read_ids(["7_0"]).ok  # sacct failed: nothing is known
    mode.update(sacct="ok", squeue="down")
    reading = reader.read_ids(["7_0"])  # squeue failed: an empty queue would lose every job
    assert not reading.ok and "squeue exited 1" in reading.problem
    mode["squeue"] = "slow"
    assert not reader.read_ids(["7_0"]).ok
    mode["squeue"] = "ok"
    mode["sacct"] = "off"
    reading = reader.read_ids(["7_0"])
    assert reading.ok and reading.state("7_0") == "RUNNING" and reading.state("8_0") is None
    calls.clear()
    assert reader.read_ids(["7_1"]).ok and calls == ["squeue"]  # sacct left out for good
    missing = job_wait.SlurmReader(run=run, which=lambda n: None)
    assert not missing.read_ids(["7_0"]).ok


# --- pending for a reason ----------------------------------------------------------------------
def test_a_job_pending_for_a_reason_is_waited_for_past_the_grace_period(tmp_path, monkeypatch,
                                                                         caplog):
    plan = make_plan(tmp_path, 1)

    def script(n, jobs):
        if n <= 8:  # held for 8 polls x 0.2 s, grace 0.5 s
            return Reading(ok=True, states={"90_0": "PENDING"},
                           reasons={"90_0": "JobHeldUser"})
        if n == 10:
            jobs[0].finish()
        return Reading(ok=True, states={"90_0": "RUNNING"})

    launcher, _ = make_launcher(PtychoSlurmLauncher, plan, Scripted(script), monkeypatch,
                                grace=0.5, poll=0.2)
    caplog.set_level(logging.INFO)
    (ret,) = launch_within(launcher, [plan.jobs[0].overrides], 30)
    assert ret.return_value == "trained"
    assert any("1 waiting (JobHeldUser 1)" in r.getMessage() for r in caplog.records)


def test_waiting_and_ended_states_are_not_unknown():
    for state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"):
        assert job_wait.category(state) in (job_wait.WAITING, job_wait.RUNNING), state
    for state in ("CANCELLED by 0", "FAILED", "TIMEOUT", "NODE_FAIL", "COMPLETED",
                  "OUT_OF_MEMORY", "FINISHED", "INTERRUPTED", "NO PROCESS AND NO RESULT"):
        assert job_wait.category(state) == job_wait.ENDED, state
    for state in (None, "", "UNKNOWN", "SOMETHING_NEW"):
        assert job_wait.category(state) == job_wait.UNKNOWN, state


def test_an_ended_job_waits_for_its_result_file_then_is_recorded(tmp_path, monkeypatch):
    """SLURM says CANCELLED: the result file may still reach this machine (NFS); after the
    reader's result_wait_s without it, the job is recorded."""
    plan = make_plan(tmp_path, 1)
    start_run(plan.jobs[0].run_dir)
    reader = Scripted(lambda n, jobs: Reading(ok=True, states={"90_0": "CANCELLED by 0"}))
    reader.result_wait_s = 1.0
    launcher, _ = make_launcher(PtychoSlurmLauncher, plan, reader, monkeypatch, grace=60,
                                poll=5)
    t0 = time.monotonic()
    launch_within(launcher, [plan.jobs[0].overrides], 15)
    assert 1.0 <= time.monotonic() - t0 < 2.5  # polled every 1 s while settling, not 5 s
    assert status_of(plan.jobs[0].run_dir) == "preempted"


# --- submitit_local ------------------------------------------------------------------------------
def test_submitit_local_a_job_process_gone_without_a_result_is_over_at_once(tmp_path,
                                                                            monkeypatch):
    from submitit.local.local import LocalJob

    plan = make_plan(tmp_path, 2)
    start_run(plan.jobs[0].run_dir)
    folder = tmp_path / "sub"
    folder.mkdir()

    class LocalExecutor:
        def map_array(self, fn, overrides, *rest):
            jobs = []
            for _ in overrides:  # each "controller" exits at once, writing nothing
                proc = subprocess.Popen([sys.executable, "-c", "pass"])
                proc.wait()
                jobs.append(LocalJob(folder=folder, job_id=str(proc.pid), process=proc))
            jobs.append(LocalJob(folder=folder, job_id="0", process=None))
            return jobs[:len(overrides)]

    launcher = PtychoLocalLauncher(submitit_folder=str(folder), lost_job_grace_s=300.0,
                                   poll_interval_s=30.0)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(plan.sweep_dir)}}})
    monkeypatch.setattr(launcher, "_executor", lambda submitit: LocalExecutor())
    monkeypatch.setitem(preflight._STATE, "plan", plan)
    monkeypatch.setitem(preflight._STATE, "alive", {})
    t0 = time.monotonic()
    returns = launch_within(launcher, [j.overrides for j in plan.jobs], 10)
    assert time.monotonic() - t0 < 3  # not the 30 s poll, not the 300 s grace
    assert all(r.status == JobStatus.COMPLETED for r in returns)
    result = json.loads((plan.jobs[0].run_dir / records.RESULT).read_text())
    assert result["status"] == "preempted"
    assert result["failure"]["message"].startswith("submitit_local job ")
    assert not (plan.jobs[1].run_dir / records.RESULT).exists()


def test_local_reader_reads_each_controller_process():
    from submitit.local.local import LocalJob

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = LocalJob(folder="/nonexistent", job_id=str(proc.pid), process=proc)
        t = Tracked(index=0, overrides=[], job_id=live.job_id, job=live)
        assert job_wait.LocalReader().read([t]).state(t.job_id) == "RUNNING"
    finally:
        proc.kill()
        proc.wait()
    reading = job_wait.LocalReader().read([t])
    assert job_wait.category(reading.state(t.job_id)) == job_wait.ENDED


# --- SIGTERM / SIGINT to the launcher ------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_ends_it_promptly_and_releases_the_sweep_lock(
        tmp_path, monkeypatch, caplog, signum):
    plan = make_plan(tmp_path, 2)
    reader = Scripted(lambda n, jobs: Reading(
        ok=True, states={"90_0": "RUNNING", "90_1": "PENDING"}, reasons={"90_1": "Resources"}))
    launcher, _ = make_launcher(PtychoSlurmLauncher, plan, reader, monkeypatch, poll=30)
    monkeypatch.setitem(preflight._STATE, "lock", SweepLock(plan.sweep_dir).acquire())
    with pytest.raises(SweepLocked):
        SweepLock(plan.sweep_dir).acquire()
    before = signal.getsignal(signum)
    caplog.set_level(logging.INFO)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signum))

    def too_long(*_):
        raise TimeoutError("the launcher did not stop within 5 s of the signal")

    old_alarm = signal.signal(signal.SIGALRM, too_long)  # a wait that does not end fails
    t0 = time.monotonic()
    timer.start()
    signal.setitimer(signal.ITIMER_REAL, 5.5)
    try:
        # SystemExit: Hydra's plugin scan may have loaded the launcher module anew (its own
        # LauncherStopped class), so the type is checked by name
        with pytest.raises(SystemExit) as stopped:
            launcher.launch([j.overrides for j in plan.jobs], initial_job_idx=0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        timer.cancel()
    assert time.monotonic() - t0 < 1.5  # not the 30 s poll interval
    assert type(stopped.value).__name__ == LauncherStopped.__name__
    assert stopped.value.code == 128 + signum
    assert preflight._STATE["lock"] is None and preflight._STATE["plan"] is None
    SweepLock(plan.sweep_dir).acquire().release()  # free: a rerun may start now
    assert signal.getsignal(signum) is before  # the launcher's handlers are gone
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"launcher stopped by {signal.Signals(signum).name}: 2 job(s)" in text
    assert "90_0 RUNNING" in text and "90_1 PENDING (Resources)" in text
    assert "run the same command again" in text and "scancel 90" in text
    entries = submitted.read(plan.sweep_dir)  # the rerun can recognise them
    assert {e["job_id"] for e in entries.values()} == {"90_0", "90_1"}


def test_the_launcher_process_exits_promptly_on_sigterm(tmp_path):
    """A real process: the launcher polls every 30 s; SIGTERM ends it within a second or two,
    with exit status 143, the resume line, and the sweep lock free."""
    code = f"""
import logging, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from pathlib import Path
import test_launcher_wait as t
from ptychostab.launch import preflight
from ptychostab.launch.job_wait import Reading
from ptychostab.launch.sweep_lock import SweepLock
class MP:
    def setattr(self, obj, name, value): setattr(obj, name, value)
    def setitem(self, d, k, v): d[k] = v
plan = t.make_plan(Path({str(tmp_path)!r}), 1)
reader = t.Scripted(lambda n, jobs: Reading(ok=True, states={{"90_0": "RUNNING"}}))
launcher, _ = t.make_launcher(t.PtychoSlurmLauncher, plan, reader, MP(), poll=30)
preflight._STATE["lock"] = SweepLock(plan.sweep_dir).acquire()
print("waiting", flush=True)
launcher.launch([plan.jobs[0].overrides], initial_job_idx=0)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "launcher stopped by SIGTERM" in out and "run the same command again" in out


# --- the jobs of an earlier launch ---------------------------------------------------------------
def test_a_rerun_recognises_recorded_jobs_still_queued_and_submits_only_the_rest(
        tmp_path, monkeypatch):
    """Runs 0 and 1 have jobs of an earlier launch (submitted.json): 0 still waits in the
    queue, 1 ended long ago; run 2 has a fresh run.lock without a SLURM job (a run started by
    hand). The rerun waits for 0 (its job) and 2 (its lock), submits only 1."""
    from ptychostab.runs.lock import RunLock

    plan = make_plan(tmp_path, 3)
    submitted.record(plan.sweep_dir, "s", [(j.run_dir, j.run_dir, f"41_{j.index}")
                                           for j in plan.jobs[:2]], backend="slurm")
    plan.jobs[2].run_dir.mkdir(parents=True)
    held = RunLock(plan.jobs[2].run_dir / "run.lock")
    held.acquire()
    reading = Reading(ok=True, states={"41_0": "PENDING", "41_1": "COMPLETED"},
                      reasons={"41_0": "Priority"})
    queue = types.SimpleNamespace(read_ids=lambda ids: reading)
    alive = job_wait.find_alive(plan, backend="slurm", reader=queue)
    assert set(alive) == {plan.jobs[0].run_dir, plan.jobs[2].run_dir}
    assert (alive[plan.jobs[0].run_dir].job_id, alive[plan.jobs[0].run_dir].how) == ("41_0",
                                                                                   "queue")
    assert alive[plan.jobs[2].run_dir].how == "lock"

    def script(n, jobs):
        if n == 2:
            jobs[0].finish()  # the submitted job (run 1)
            held.release()  # the hand-started run ends with its own record
            records.atomic_write_json(plan.jobs[2].run_dir / records.RESULT, {"status": "ok"})
        return Reading(ok=True, states={"41_0": "PENDING" if n < 3 else "COMPLETED",
                                        "90_0": "RUNNING"})

    reader = Scripted(script)
    launcher, executor = make_launcher(PtychoSlurmLauncher, plan, reader, monkeypatch,
                                       poll=0.1)
    monkeypatch.setitem(preflight._STATE, "alive", alive)
    adopted_pickle = plan.sweep_dir / ".submitit" / "41_0" / "41_0_0_result.pkl"
    returns = launch_within(launcher, [j.overrides for j in plan.jobs], 20)
    assert executor.submitted == [plan.jobs[1].overrides]  # only the rest
    assert not adopted_pickle.exists()  # the adopted job left no result: recorded as killed
    assert "killed, recorded as missing" in returns[0].return_value
    assert returns[1].return_value == "trained"
    assert "its own record" in returns[2].return_value
    entries = submitted.read(plan.sweep_dir)
    assert entries["arm/seed=0"]["job_id"] == "41_0" and entries["arm/seed=1"]["job_id"] == "90_0"


def test_when_the_queue_cannot_answer_recorded_jobs_are_not_submitted_again(tmp_path):
    plan = make_plan(tmp_path, 2)
    submitted.record(plan.sweep_dir, "s", [(plan.jobs[0].run_dir, plan.jobs[0].run_dir, "41_0")],
                     backend="slurm")
    queue = types.SimpleNamespace(read_ids=lambda ids: Reading(ok=False, problem="down"))
    alive = job_wait.find_alive(plan, backend="slurm", reader=queue, retry_s=0)
    assert {k: a.how for k, a in alive.items()} == {plan.jobs[0].run_dir: "unsure"}


def test_submitit_local_rerun_recognises_a_live_controller_process(tmp_path):
    from ptychostab.runs.lock import process_start

    plan = make_plan(tmp_path, 2)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        submitted.record(plan.sweep_dir, "s", [(j.run_dir, j.run_dir, str(proc.pid))
                                               for j in plan.jobs], backend="local",
                         pids={str(proc.pid): (proc.pid, process_start(proc.pid))})
        entries = submitted.read(plan.sweep_dir)
        entries["arm/seed=1"]["pid_start"] = "linux:another:1"  # the pid was reused since
        records.atomic_write_json(plan.sweep_dir / submitted.SUBMITTED_JSON,
                                  {"schema_version": 1, "sweep": "s", "runs": entries})
        alive = job_wait.find_alive(plan, backend="local")
        assert set(alive) == {plan.jobs[0].run_dir}
        check = alive[plan.jobs[0].run_dir].check
        assert check()
    finally:
        proc.kill()
        proc.wait()
    assert not check()


def test_live_packs_keep_their_members_and_the_rest_is_regrouped(tmp_path):
    from ptychostab.launch import packs

    plan = make_plan(tmp_path, 5)
    plan.pack_size = 2
    plan.packs = packs.group_packs(plan.jobs, 2)  # (0, 1) (2, 3); 4 alone
    packs.write_packs(plan)
    # a rerun: the pack (2, 3) still queued; seed 0 finished meanwhile
    plan.jobs[0].status = "done"
    alive = {plan.jobs[2].run_dir: "x", plan.jobs[3].run_dir: "x"}
    preflight.keep_live_packs(plan, alive)
    assert [[j.seed for j in p.jobs] for p in plan.packs] == [[2, 3], [1, 4]]
    assert plan.packs[0].pack_id == "arm-seeds-2-3"


# --- config --------------------------------------------------------------------------------------
def test_the_wait_settings_reach_both_launchers_and_stay_out_of_the_arm_id():
    from ptychostab import config as cfgmod
    from ptychostab import identity

    slurm = cfgmod.compose(["launcher=slurm", "cluster.lost_job_grace_s=7",
                            "cluster.poll_interval_s=3"], return_hydra_config=True)
    launcher = OmegaConf.to_container(slurm.hydra.launcher, resolve=True)
    assert (launcher["lost_job_grace_s"], launcher["poll_interval_s"]) == (7, 3)
    local = cfgmod.compose(["launcher=submitit_local", "cluster.lost_job_grace_s=9"],
                           return_hydra_config=True)
    assert OmegaConf.to_container(local.hydra.launcher, resolve=True)["lost_job_grace_s"] == 9
    assert identity.arm_id(cfgmod.compose(["cluster.lost_job_grace_s=1"])) == identity.arm_id(
        cfgmod.compose([]))
    bad = cfgmod.problems(cfgmod.compose(["cluster.lost_job_grace_s=-1",
                                          "cluster.poll_interval_s=0"], check=False))
    assert any("cluster.lost_job_grace_s" in p for p in bad)
    assert any("cluster.poll_interval_s" in p for p in bad)


def test_the_wait_settings_are_not_handed_to_submitit(tmp_path):
    import submitit

    launcher = PtychoSlurmLauncher(submitit_folder=str(tmp_path / "%j"), lost_job_grace_s=5,
                                   poll_interval_s=1, timeout_min=10)
    executor = launcher._executor(submitit)  # submitit refuses parameters it does not know
    assert executor._executor.parameters["time"] == 10


def test_a_run_that_finished_while_the_rerun_was_planning_is_not_launched_again(tmp_path):
    """The queue is read first, the records after: a job of the earlier launch that ended in
    between (gone from the queue) left its final result, and is skipped."""
    plan = make_plan(tmp_path, 3)
    for job, status in zip(plan.jobs, ("ok", "nonfinite", "preempted"), strict=True):
        job.run_dir.mkdir(parents=True)
        records.atomic_write_json(job.run_dir / records.RESULT, {
            "schema_version": records.SCHEMA_VERSION, "status": status})
    found = preflight.refresh_finished(plan, retry=["nonfinite"])
    assert [j.seed for j in found] == [0]
    assert [j.status for j in plan.jobs] == ["done", "todo", "todo"]
    assert tuple(plan.jobs[0].overrides) in plan.final_jobs()
