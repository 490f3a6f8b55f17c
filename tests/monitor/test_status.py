"""The live status view (``python -m ptychostab.cli.status``): a sweep folder with runs in every
state built from records, SLURM output injected, the JSON document checked field by field, and
the guarantees (no training code imported, nothing written). One test on a real cluster
(marker ``slurm``)."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptychostab.cli import status as cli
from ptychostab.monitor import slurm
from ptychostab.monitor import status as st
from ptychostab.runs import records

NOW = time.time()
HOST = socket.gethostname()
EPOCHS = 10  # max_epochs of every run; each epoch = 100 steps in 10 s
ARMS = {"aaaa": ("hybrid", "arch=hybrid"), "bbbb": ("stable_hybrid", "arch=stable_hybrid"),
        "cccc": ("fno", "arch=fno")}


def iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def run_folder(sweep: Path, arm: str, seed: int, *, history: int = 0, result: str | None = None,
               cause: str | None = None, slurm: str | None = None, manifest: bool = True,
               lock: dict | None = None, extra: dict | None = None) -> Path:
    """One run folder, written with the records' own writers."""
    run = sweep / arm / f"seed={seed}"
    run.mkdir(parents=True, exist_ok=True)
    array, task = (slurm.split("_") if slurm else (None, None))
    if manifest:
        records.atomic_write_json(run / records.MANIFEST, {
            "schema_version": records.SCHEMA_VERSION, "sweep": sweep.name, "arm_id": arm,
            "arm": {"arch": ARMS[arm][0], "label": ARMS[arm][0]}, "seed": seed,
            "config": {"trainer": {"max_epochs": EPOCHS}}, "start_time": iso(NOW - 100),
            "slurm": {"SLURM_JOB_ID": str(900 + seed) if slurm else None,
                      "SLURM_ARRAY_JOB_ID": array, "SLURM_ARRAY_TASK_ID": task,
                      "SLURM_RESTART_COUNT": None}})
    if history:
        records.write_history(run / records.HISTORY, [
            {"epoch": e, "global_step": 100 * (e + 1), "wall_s": 10.0 * (e + 1)}
            for e in range(history)])
        os.utime(run / records.HISTORY, (NOW - 4, NOW - 4))  # 4 s into the current epoch
    if result:
        fail = None if result == "ok" else records.failure(
            result, epoch=history, step=100 * history, wall_s=10.0 * history, message="x",
            cause=cause)
        records.atomic_write_json(run / records.RESULT, records.result_record(
            status=result, sweep=sweep.name, arm_id=arm, seed=seed, failure_info=fail,
            metrics={}, metrics_best=None, grad_norm={}, epochs_completed=history,
            global_step=100 * history, wall_s=10.0 * history, params={},
            peak_memory_bytes=None, **(extra or {})))
    if lock is not None:
        records.atomic_write_json(run / "run.lock", lock)
    return run


def fresh_lock(**kw) -> dict:
    return {"pid": os.getpid(), "host": HOST, "slurm_job_id": None, "pack_id": None,
            "start_time": iso(NOW - 60), "heartbeat_time": iso(NOW - 5), "token": "t", **kw}


PLAN = [("aaaa", s) for s in range(10)] + [("bbbb", s) for s in range(8)]
#: (arm, seed) -> (status, family, live) expected
EXPECTED = {
    ("aaaa", 0): ("ok", "ok", "done"),
    ("aaaa", 1): ("nonfinite", "instability", "done"),
    ("aaaa", 2): ("exception", "other final", "done"),
    ("aaaa", 3): ("infra", "not final", "stopped"),
    ("aaaa", 4): ("missing", "not final", "running"),  # fresh lock, this process
    ("aaaa", 5): ("missing", "not final", "stopped"),  # stale lock (old heartbeat)
    ("aaaa", 6): ("corrupt", "not final", "stopped"),
    ("aaaa", 7): ("missing", "not final", "not started"),  # planned, no folder
    ("aaaa", 8): ("missing", "not final", "not started"),  # folder without manifest
    ("aaaa", 9): ("interrupted", "not final", "stopped"),
    ("bbbb", 0): ("timeout", "not final", "dead"),  # sacct TIMEOUT
    ("bbbb", 1): ("missing", "not final", "dead"),  # sacct FAILED, no result
    ("bbbb", 2): ("missing", "not final", "queued"),  # pending array task (submitit folder)
    ("bbbb", 3): ("preempted", "not final", "queued"),  # requeued, pending again
    ("bbbb", 4): ("oom", "other final", "done"),  # final record beats OUT_OF_MEMORY
    ("bbbb", 5): ("collapsed", "instability", "done"),
    ("bbbb", 6): ("diverged", "instability", "done"),
    ("bbbb", 7): ("missing", "not final", "running"),  # squeue RUNNING, no lock yet
    ("cccc", 0): ("ok", "ok", "done"),  # on disk, not in plan.csv
}
SQUEUE = "500_2|PENDING|None\n500_3|PENDING|BeginTime\n500_7|RUNNING|None\n777_1|RUNNING|None\n"
SACCT = ("500_0|TIMEOUT|0:0\n500_1|FAILED|1:0\n500_1.batch|FAILED|1:0\n"
         "500_4|OUT_OF_MEMORY|0:125\n500_[2-3]|PENDING|0:0\n500_7|RUNNING|0:0\n")


@pytest.fixture
def sweep(tmp_path) -> Path:
    sw = tmp_path / "stage_a"
    sw.mkdir()
    with open(sw / "plan.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sweep", "arm_id", "arm_label", "seed", "overrides", "status"])
        for arm, seed in PLAN:
            w.writerow(["stage_a", arm, ARMS[arm][0], seed, f"{ARMS[arm][1]} seed={seed}", "todo"])
    run_folder(sw, "aaaa", 0, history=EPOCHS, result="ok")
    run_folder(sw, "aaaa", 1, history=3, result="nonfinite")
    run_folder(sw, "aaaa", 2, history=1, result="exception")
    run_folder(sw, "aaaa", 3, history=2, result="infra", cause="node")
    run_folder(sw, "aaaa", 4, history=4, lock=fresh_lock())
    run_folder(sw, "aaaa", 5, history=2, lock=fresh_lock(host="elsewhere",
                                                        heartbeat_time=iso(NOW - 7200)))
    (run_folder(sw, "aaaa", 6, history=2) / records.RESULT).write_text("{not json")
    (sw / "aaaa" / "seed=8").mkdir()
    run_folder(sw, "aaaa", 9, history=5, result="interrupted")
    run_folder(sw, "bbbb", 0, history=3, result="timeout", slurm="500_0",
               extra={"slurm_job_id": "500_0", "recorded_by": "launcher"})
    run_folder(sw, "bbbb", 1, history=1, slurm="500_1")
    sub = sw / ".submitit" / "500_2"
    sub.mkdir(parents=True)  # what submitit pickles: the grid index and the job's overrides
    (sub / "500_2_submitted.pkl").write_bytes(pickle.dumps(
        (["arch=stable_hybrid", "seed=2"], "hydra.sweep.dir", 12, "job_id_for_12")))
    run_folder(sw, "bbbb", 3, history=2, result="preempted", slurm="500_3")
    run_folder(sw, "bbbb", 4, history=2, result="oom", slurm="500_4")
    run_folder(sw, "bbbb", 5, history=6, result="collapsed")
    run_folder(sw, "bbbb", 6, history=7, result="diverged")
    run_folder(sw, "bbbb", 7, slurm="500_7")
    run_folder(sw, "cccc", 0, history=EPOCHS, result="ok")
    return sw


def fake_query(job_ids, timeout=15.0):
    assert job_ids == ["500"]  # what the sweep knows of: its one array
    return slurm.make_queue(SQUEUE, SACCT)


def doc_of(sweep: Path, *args: str) -> dict:
    out = io.StringIO()
    assert cli.main([str(sweep), "--json", *args], out=out, clock=lambda: NOW,
                    query=fake_query) == 0
    return json.loads(out.getvalue())


def test_every_run_state_field_by_field(sweep):
    doc = doc_of(sweep)
    assert doc["schema"] == "ptychostab.status/1"
    assert doc["slurm"] == {"sources": ["squeue", "sacct"], "problems": [], "note": "",
                            "job_states": 7}
    (sw,) = doc["sweeps"]
    assert (sw["sweep"], sw["plan"], sw["problems"]) == ("stage_a", True, [])
    runs = {(r["arm_id"], r["seed"]): r for a in sw["arms"] for r in a["runs"]}
    assert {k: (r["status"], r["family"], r["live"]) for k, r in runs.items()} == EXPECTED
    assert [a["arm_id"] for a in sw["arms"]] == ["aaaa", "bbbb", "cccc"]
    assert not runs[("cccc", 0)]["in_plan"] and runs[("aaaa", 7)]["in_plan"]
    assert runs[("aaaa", 3)]["cause"] == "node" and runs[("aaaa", 3)]["failure_kind"] == "infra"
    assert runs[("aaaa", 6)]["problem"].startswith("corrupt result.json")
    assert runs[("aaaa", 5)]["lock"]["fresh"] is False
    assert "last heartbeat" in runs[("aaaa", 5)]["lock"]["stale_reason"]
    assert runs[("aaaa", 7)]["max_epochs"] == EPOCHS  # from its arm
    assert runs[("aaaa", 7)]["arm_label"] == "hybrid"
    slurm = {k: (r["slurm_job_id"], r["slurm_state"]) for k, r in runs.items()}
    assert slurm[("bbbb", 0)] == ("500_0", "TIMEOUT")
    assert slurm[("bbbb", 1)] == ("500_1", "FAILED")
    assert slurm[("bbbb", 2)] == ("500_2", "PENDING")  # via .submitit, grid index 12
    assert slurm[("bbbb", 4)] == ("500_4", "OUT_OF_MEMORY")
    assert slurm[("aaaa", 4)] == (None, None)


def test_running_runs_epoch_rate_and_eta(sweep):
    doc = doc_of(sweep)
    arm_a, arm_b, _ = doc["sweeps"][0]["arms"]
    (run,) = arm_a["running"]
    # 4 epochs done x 100 steps in 10 s each: 10 steps/s; 6 epochs left = 60 s, 4 s of it spent
    assert run == {"seed": 4, "epoch": 4, "epochs_done": 4, "max_epochs": EPOCHS,
                   "steps_per_s": pytest.approx(10.0), "eta_s": pytest.approx(56.0, abs=0.01),
                   "slurm_job_id": None}
    (run,) = arm_b["running"]  # running on SLURM, no history yet
    assert (run["seed"], run["epoch"], run["steps_per_s"], run["eta_s"]) == (7, 0, None, None)
    assert run["slurm_job_id"] == "500_7"
    full = {r["seed"]: r for r in arm_a["runs"]}
    assert full[4]["epoch_s"] == pytest.approx(10.0) and full[4]["global_step"] == 400


def test_counts_by_status_family_and_live(sweep):
    doc = doc_of(sweep)
    sw = doc["sweeps"][0]
    a = sw["arms"][0]["counts"]
    assert a["n_runs"] == 10
    assert a["by_family"] == {"ok": 1, "instability": 1, "other final": 1, "not final": 7}
    assert set(a["by_status"]) == set(records.ALL_STATUSES)
    assert {k: v for k, v in a["by_status"].items() if v} == {
        "ok": 1, "nonfinite": 1, "exception": 1, "infra": 1, "interrupted": 1, "corrupt": 1,
        "missing": 4}
    assert a["live"] == {"done": 3, "running": 1, "queued": 0, "dead": 0, "not started": 2,
                         "stopped": 4}
    b = sw["arms"][1]["counts"]
    assert b["live"] == {"done": 3, "running": 1, "queued": 2, "dead": 2, "not started": 0,
                         "stopped": 0}
    total = sw["counts"]
    assert total["n_runs"] == 19 and sum(total["by_status"].values()) == 19
    assert total["by_family"] == {"ok": 2, "instability": 3, "other final": 2, "not final": 12}
    assert doc["totals"]["counts"] == total


def test_sweep_eta_is_remaining_work_over_observed_parallelism(sweep):
    sw = doc_of(sweep)["sweeps"][0]
    eta = sw["eta"]
    runs = [r for a in sw["arms"] for r in a["runs"]]
    left = [r for r in runs if r["live"] != "done"]
    work = sum(r["eta_s"] if r["live"] == "running" and r["eta_s"] is not None
               else (r["max_epochs"] - r["epochs_done"]) * 10.0 for r in left)
    assert eta["runs_left"] == len(left) == 12 and eta["runs_without_estimate"] == 0
    assert eta["parallelism"] == 2  # aaaa/4 and bbbb/7 run now
    assert eta["work_s"] == pytest.approx(work)
    assert eta["eta_s"] == pytest.approx(work / 2)
    assert eta["per_run_s"] == pytest.approx(EPOCHS * 10.0)
    assert "parallelism" in eta["assumption"].lower()


def test_text_view_names_families_and_slurm(sweep):
    out = io.StringIO()
    assert cli.main([str(sweep)], out=out, clock=lambda: NOW, query=fake_query) == 0
    text = out.getvalue()
    assert "ok 1 | instability 1 (nonfinite 1) | other final 1 (exception 1) | not final 7" in text
    assert "infra 1 [node]" in text
    assert "now: done 3 · running 1 · not started 2 · stopped 4" in text
    assert "epoch 5/10  10.0 steps/s  ETA 56s" in text
    assert "[SLURM 500_1 FAILED]" in text and "[SLURM 500_2 PENDING]" in text
    assert "ETA assumption:" in text and "\x1b[" not in text


def test_without_slurm_the_lock_decides(sweep):
    doc = doc_of(sweep, "--no-slurm")
    runs = {(r["arm_id"], r["seed"]): r["live"] for a in doc["sweeps"][0]["arms"]
            for r in a["runs"]}
    assert runs[("aaaa", 4)] == "running" and runs[("bbbb", 1)] == "stopped"
    assert runs[("bbbb", 2)] == "not started" and runs[("bbbb", 0)] == "stopped"
    assert doc["slurm"]["note"] == "not asked (--no-slurm)"


def test_lock_of_a_dead_pid_on_this_host_is_not_running(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    sw = tmp_path / "s"
    run_folder(sw, "aaaa", 0, history=1, lock=fresh_lock(pid=proc.pid))
    (run,) = st.read_sweep(sw, slurm.Queue(), now=NOW).runs
    assert run.live == "stopped" and "not running" in run.lock["stale_reason"]


def test_fresh_lock_of_another_job_beats_an_old_jobs_state(tmp_path):
    """Relaunched by hand after a cancelled SLURM job: the live process wins."""
    sw = tmp_path / "s"
    run_folder(sw, "aaaa", 0, history=1, slurm="41_0", lock=fresh_lock())
    (run,) = st.read_sweep(sw, slurm.make_queue(None, "41_0|CANCELLED by 0|0:0"), now=NOW).runs
    assert run.live == "running" and run.slurm_state == "CANCELLED"
    run_folder(sw, "aaaa", 0, lock=fresh_lock(slurm_job_id="41_0"))  # killed: SLURM knows
    (run,) = st.read_sweep(sw, slurm.make_queue(None, "41_0|CANCELLED by 0|0:0"), now=NOW).runs
    assert run.live == "dead"


def test_parsers_and_job_choice():
    assert slurm.expand_job_id("12_[1-3,7%2]") == ["12_1", "12_2", "12_3", "12_7"]
    assert slurm.expand_job_id("12_4") == ["12_4"] and slurm.expand_job_id("99") == ["99"]
    sacct = "5|CANCELLED by 0|0:0\n5.batch|CANCELLED|0:15\n"
    assert slurm.parse_sacct(sacct) == {"5": "CANCELLED"}
    assert slurm.parse_squeue("7_[0-1]|PENDING|Priority\n\ngarbage\n") == {"7_0": "PENDING",
                                                                        "7_1": "PENDING"}
    q = slurm.make_queue("3_1|PENDING|x", "3_1|FAILED|1:0\n2_1|COMPLETED|0:0")
    assert q.states == {"3_1": "PENDING", "2_1": "COMPLETED"}  # squeue beats sacct
    assert slurm.pick_job(["2_1", "10_1", "3_1"], q) == "3_1"  # pending beats newer
    assert slurm.pick_job(["2_1", "10_1"], slurm.Queue()) == "10_1"  # else the newest
    assert slurm.slurm_category("NODE_FAIL") == "dead" and slurm.slurm_category("WEIRD") is None


def test_query_queue_runs_the_commands_with_a_timeout_and_tolerates_failures():
    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw["timeout"]))
        if cmd[0] == "squeue":
            return subprocess.CompletedProcess(cmd, 0, "8_1|PENDING|x\n9_1|RUNNING|x\n", "")
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    q = cli.query_queue(["8"], timeout=3, which=lambda n: f"/usr/bin/{n}", run=run)
    assert q.states == {"8_1": "PENDING"} and q.sources == ["squeue"]  # 9: not these sweeps'
    assert q.problems and q.problems[0].startswith("sacct")
    assert calls[1][0][-1] == "--jobs=8" and "--parsable2" in calls[1][0]
    assert {t for _, t in calls} == {3}
    assert cli.query_queue(["8"], which=lambda n: None).note == "no squeue/sacct on PATH"
    assert cli.query_queue([], which=lambda n: "x").note.startswith("no SLURM job")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_refreshes_in_place_on_a_terminal_and_repeats_blocks_otherwise(sweep):
    sleeps = []
    plain, tty, lines = io.StringIO(), _Tty(), io.StringIO()
    for out, extra in ((plain, []), (tty, []), (lines, ["--json"])):
        assert cli.main([str(sweep), "--watch", "0.5", "--count", "3", *extra], out=out,
                        sleep=sleeps.append, clock=lambda: NOW, query=fake_query) == 0
    assert sleeps == [0.5] * 6
    assert "\x1b[" not in plain.getvalue() and plain.getvalue().count("sweep stage_a ") == 3
    assert tty.getvalue().count(cli.CLEAR) == 3 and tty.getvalue().startswith(cli.CLEAR)
    docs = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert len(docs) == 3 and all(d["schema"] == st.SCHEMA for d in docs)


def test_damaged_manifest_with_history_is_started_and_said(tmp_path):
    sw = tmp_path / "s"
    run = run_folder(sw, "aaaa", 0, history=2)
    (run / records.MANIFEST).write_text("[1, 2")
    (state,) = st.read_sweep(sw, slurm.Queue(), now=NOW).runs
    assert (state.status, state.live, state.epochs_done) == ("missing", "stopped", 2)
    assert state.problem.startswith("corrupt manifest.json")


def test_a_folder_given_twice_is_shown_once(sweep):
    out = io.StringIO()
    assert cli.main([str(sweep), str(sweep / ".." / sweep.name), "--json"], out=out,
                    clock=lambda: NOW, query=fake_query) == 0
    assert len(json.loads(out.getvalue())["sweeps"]) == 1


def test_missing_folder_is_a_usage_error(tmp_path):
    assert cli.main([str(tmp_path / "nope")], out=io.StringIO(), query=fake_query) == 2


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in [root, *root.rglob("*")]}


def test_reads_only_and_imports_no_training_code(sweep):
    before = _tree(sweep)
    code = ("import json, runpy, sys\n"
            "sys.argv = ['status', sys.argv[1], '--json']\n"
            "try:\n    runpy.run_module('ptychostab.cli.status', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning',"
            " 'pytorch_lightning', 'hydra', 'pandas') or m.startswith(('ptychostab.training',"
            " 'ptychostab.models', 'ptychostab.runs.job')))\n"
            "print('BAD', json.dumps(bad))\n")
    res = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True,
                         text=True, timeout=120, cwd=sweep.parent)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout[: res.stdout.rindex("BAD")])
    assert doc["sweeps"][0]["counts"]["n_runs"] == 19
    assert res.stdout.strip().endswith("BAD []")
    assert _tree(sweep) == before


# --- on a real cluster --------------------------------------------------------------------------
def _cluster_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "alloc"))


@pytest.mark.slurm
@pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (make slurm-up)")
def test_status_follows_a_slurm_sweep(tmp_path):
    from _fixtures import TINY, train, wait_for

    cluster = ["launcher=slurm", "cluster.gpus_per_node=null", "cluster.cpus_per_task=1",
               "cluster.mem_gb=null", "cluster.timeout_min=20", "cluster.array_parallelism=1"]
    proc = train(["-m", *cluster, "seed=range(3)", *TINY, "trainer.max_epochs=3"], tmp_path,
                 wait=False)
    sweep_dir = tmp_path / "default"
    seen: set[str] = set()

    def look() -> dict:
        out = io.StringIO()
        cli.main([str(sweep_dir), "--json"], out=out)
        doc = json.loads(out.getvalue())
        for r in (r for a in doc["sweeps"][0]["arms"] for r in a["runs"]):
            seen.add(r["live"])
        return doc

    try:
        assert wait_for(lambda: (sweep_dir / "plan.csv").exists() and "queued" in
                        {r["live"] for a in look()["sweeps"][0]["arms"] for r in a["runs"]}, 300)
        assert "squeue" in look()["slurm"]["sources"]
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            ids = st.known_jobs([st.read_sweep(sweep_dir, now=time.time())])
            if ids:  # only this test's jobs
                subprocess.run(["scancel", *ids], check=False)
    assert proc.returncode == 0, out[-3000:]
    doc = look()
    counts = doc["sweeps"][0]["counts"]
    assert counts["live"]["done"] == counts["n_runs"] == 3
    assert all(r["slurm_job_id"] for a in doc["sweeps"][0]["arms"] for r in a["runs"])
    assert "queued" in seen


def test_queued_runs_say_why_their_job_waits(sweep):
    """``make status``: a pending job's squeue reason (held, resources, begin time, ...)."""
    doc = doc_of(sweep)
    arm_b = doc["sweeps"][0]["arms"][1]
    runs = {r["seed"]: r for r in arm_b["runs"]}
    assert runs[3]["slurm_reason"] == "BeginTime" and runs[2]["slurm_reason"] is None  # "None"
    assert runs[7]["slurm_reason"] is None  # running: no reason
    assert arm_b["counts"]["waiting"] == {"BeginTime": 1}
    out = io.StringIO()
    assert cli.main([str(sweep)], out=out, clock=lambda: NOW, query=fake_query) == 0
    text = out.getvalue()
    assert "queued 2 (waiting: BeginTime 1)" in text
    assert "[SLURM 500_3 PENDING, waiting: BeginTime]" in text


def test_a_cancelled_pending_task_still_in_saccts_pending_row_is_not_queued():
    """scancel of pending task 5_2: squeue drops it, sacct still reads ``5_[1-3] PENDING``."""
    q = slurm.make_queue("5_1|PENDING|Resources\n5_3|PENDING|JobHeldUser\n",
                         "5_[1-3]|PENDING|0:0\n4_0|COMPLETED|0:0\n")
    assert q.state("5_2") is None and q.state("5_1") == "PENDING"
    assert q.state("4_0") == "COMPLETED"  # ended, no longer in squeue: sacct's word stands
    assert q.reason("5_3") == "JobHeldUser" and q.reason("5_1") == "Resources"
    assert slurm.parse_reasons("7_0|RUNNING|None\n7_1|PENDING|None\n") == {}


def test_the_launchers_record_names_the_job_of_a_run_that_has_not_started(tmp_path):
    from ptychostab.launch import submitted

    sw = tmp_path / "s"
    sw.mkdir()
    with open(sw / "plan.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sweep", "arm_id", "arm_label", "seed", "overrides", "status"])
        w.writerow(["s", "aaaa", "hybrid", 0, "arch=hybrid seed=0", "todo"])
    submitted.record(sw, "s", [(sw / "aaaa" / "seed=0", sw / "aaaa" / "seed=0", "61_0")],
                     backend="slurm")
    q = slurm.make_queue("61_0|PENDING|Priority\n", None)
    (run,) = st.read_sweep(sw, q, now=NOW).runs
    assert (run.slurm_job_id, run.live, run.slurm_reason) == ("61_0", "queued", "Priority")


# --- ETA of slow epochs, and a folder with only a stale lock ----------------------------------
def _rows(epoch_s: list[float], steps: int = 100) -> list[dict]:
    wall, out = 0.0, []
    for e, s in enumerate(epoch_s):
        wall += s
        out.append({"epoch": float(e), "global_step": float((e + 1) * steps), "wall_s": wall})
    return out


def test_the_rate_follows_the_recent_slow_epochs_not_the_early_fast_ones():
    rows = _rows([1.0] * 5 + [10.0] * st.RATE_WINDOW)
    epoch_s, steps_per_epoch, rate = st.progress(rows)
    assert steps_per_epoch == 100 and rate == pytest.approx(10.0)  # 100 steps per 10 s


def test_a_slow_current_epoch_never_takes_more_than_one_epoch_off_the_eta():
    run = st.RunState(arm_id="a", seed=0, run_dir="x", max_epochs=10, epochs_done=5,
                      steps_per_s=10.0)
    # 5 epochs of 100 steps left at 10 steps/s = 50 s; 30 s into a 10 s epoch: 40 s, not 20 s
    assert st.run_eta(run, 100.0, since_epoch_s=30.0) == pytest.approx(40.0)
    assert st.run_eta(run, 100.0, since_epoch_s=4.0) == pytest.approx(46.0)
    assert st.run_eta(run, 100.0, since_epoch_s=-3.0) == pytest.approx(50.0)


def test_the_eta_of_a_running_run_with_slowing_epochs(tmp_path):
    run_dir = tmp_path / "s" / "arm" / "seed=0"
    run_dir.mkdir(parents=True)
    records.atomic_write_json(run_dir / records.MANIFEST, {"config": {"trainer": {
        "max_epochs": 20}}})
    records.write_history(run_dir / records.HISTORY, _rows([1.0] * 5 + [10.0] * 5))
    now = (run_dir / records.HISTORY).stat().st_mtime
    run = st.RunState(arm_id="arm", seed=0, run_dir=str(run_dir))
    st.read_run_state(run, now=now)
    assert run.steps_per_s == pytest.approx(10.0)
    assert run.eta_s is None or run.eta_s == pytest.approx(100.0)  # 10 epochs x 10 s
    st.resolve(run, slurm.Queue())
    run.lock = {"fresh": True}
    st.resolve(run, slurm.Queue())
    assert run.live == "running" and run.eta_s == pytest.approx(100.0)


def test_a_folder_with_only_a_stale_lock_is_stopped_not_not_started(tmp_path):
    run_dir = tmp_path / "s" / "arm" / "seed=0"
    run_dir.mkdir(parents=True)
    (run_dir / records.RUN_LOCK).write_text(json.dumps({
        "pid": 999999, "host": socket.gethostname(), "token": "t",
        "start_time": "2026-01-01T00:00:00+00:00", "heartbeat_time": "2026-01-01T00:00:00+00:00"}))
    run = st.RunState(arm_id="arm", seed=0, run_dir=str(run_dir))
    st.read_run_state(run, now=time.time())
    assert run.lock is not None and run.lock["fresh"] is False
    assert run.started and run.live == "stopped" and run.status == "missing"
