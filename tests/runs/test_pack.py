"""Seeds packed per process (runs/pack.py): K=3 members against three unpacked run_job runs on
the CPU, bit for bit; one member's NaN or evaluation exception ends that member only; SIGKILL
of a pack process and a rerun that resumes every member bit-identically; locks and manifests.

One reference (three unpacked runs of 4 epochs x 49 one-sample steps) serves every test; the
pack process of the SIGKILL test starts with the module fixture so its imports overlap.
"""

import signal
import subprocess
import sys
import time

import pytest
import torch

from ptychostab.diagnostics.drift import ACTIVATIONS, read_activations
from ptychostab.runs import job as job_mod
from ptychostab.runs import records
from ptychostab.runs.checkpoint import load_checkpoint
from ptychostab.runs.job import run_job
from ptychostab.runs.lock import RunLocked, read_lock
from ptychostab.runs.pack import STEP_DRIVER, Member, run_pack

SEEDS = (0, 1, 2)
STEPS = 49  # one-sample steps per epoch of the tiny data
GATED = """
import os, sys, time
from ptychostab.runs.pack import main
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


def config(seed, **extra):
    from ptychostab.training.testing import tiny_config

    return tiny_config(**{"seed": seed, "trainer.batch_size": 1, "trainer.max_epochs": 4,
                          **extra})


def members(root, cfgs):
    return [Member(c, root / f"seed={c.seed}", {"arch": "hybrid"}, "hybrid-abc", ["x=1"])
            for c in cfgs]


def rows(run_dir):
    return [{k: v for k, v in r.items() if k != "wall_s"}
            for r in records.read_history(run_dir / records.HISTORY).data]


def weights(run_dir):
    return load_checkpoint(run_dir / records.LAST_CKPT)["training"]["generator"]


def same_weights(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def manifest(run_dir):
    return records.read_json(run_dir / records.MANIFEST).data


def assert_as_reference(run_dir, ref_dir):
    assert rows(run_dir) == rows(ref_dir)  # every epoch's losses, grad norms, lr: exactly
    assert same_weights(weights(run_dir), weights(ref_dir))
    assert read_activations(run_dir / ACTIVATIONS) == read_activations(ref_dir / ACTIVATIONS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from omegaconf import OmegaConf

    root = tmp_path_factory.mktemp("pack")
    killed = root / "killed"
    killed.mkdir()
    args = []
    for s in SEEDS:
        OmegaConf.save(config(s), killed / f"c{s}.yaml")
        args += ["--config", str(killed / f"c{s}.yaml"), "--run-dir", str(killed / f"seed={s}")]
    proc = subprocess.Popen([sys.executable, "-c", GATED, str(killed / "go"), *args,
                             "--arm-id", "hybrid-abc", "--pack-id", "pk"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ref = root / "ref"
    for s in SEEDS:
        assert run_job(config(s), run_dir=ref / f"seed={s}", arm={"arch": "hybrid"},
                       arm_id="hybrid-abc", overrides=["x=1"])["status"] == "ok"
    yield root, ref, proc, killed
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_packed_members_equal_unpacked_runs_bit_for_bit(world):
    root, ref, _, _ = world
    cfgs = [config(s) for s in SEEDS]
    got = run_pack(members(root / "packed", cfgs), pack_id="p3")
    assert [r["status"] for r in got] == ["ok"] * 3
    assert [r["seed"] for r in got] == list(SEEDS)  # member order
    for s, r in zip(SEEDS, got, strict=True):
        run_dir = root / "packed" / f"seed={s}"
        assert_as_reference(run_dir, ref / f"seed={s}")
        want = records.read_json(ref / f"seed={s}" / records.RESULT).data
        assert r["metrics"] == want["metrics"] and r["global_step"] == 4 * STEPS
        m = manifest(run_dir)
        assert m["pack"] == {"id": "p3", "size": 3, "members": ["seed=0", "seed=1", "seed=2"]}
        assert m["segments"][-1]["pack_id"] == "p3" and m["seed"] == s
        assert m["effective"]["step_driver"] == STEP_DRIVER
        assert m["effective"]["lightning"]["deterministic"] is True
        assert manifest(ref / f"seed={s}")["pack"] is None  # unpacked: null
        assert not (run_dir / records.RUN_LOCK).exists()
        log = (run_dir / records.RUN_LOG).read_text()
        for e in range(1, 5):  # one line per seed per epoch, in its own run.log only
            assert log.count(f"seed={s} epoch {e}/4: train") == 1
        assert not any(f"seed={o} epoch" in log for o in SEEDS if o != s)
    # a rerun skips every finished member and touches nothing
    before = [manifest(root / "packed" / f"seed={s}") for s in SEEDS]
    assert run_pack(members(root / "packed", cfgs), pack_id="p4") == got
    assert [manifest(root / "packed" / f"seed={s}") for s in SEEDS] == before


def test_one_members_nan_and_anothers_evaluation_error_end_only_them(world, monkeypatch):
    root, ref, _, _ = world
    real = job_mod.evaluate_run

    def evaluate(module, *args):
        if module.batches.seed == 2:
            raise RuntimeError("injected evaluation bug")
        return real(module, *args)

    monkeypatch.setattr(job_mod, "evaluate_run", evaluate)
    nan_step = STEPS + 10  # epoch 1, mid-epoch
    cfgs = [config(0), config(1, **{"failure.test_inject_nan_step": nan_step}), config(2)]
    got = run_pack(members(root / "failing", cfgs), pack_id="pf")
    assert [r["status"] for r in got] == ["ok", "nonfinite", "exception"]
    ok, nan, err = (root / "failing" / f"seed={s}" for s in SEEDS)
    assert_as_reference(ok, ref / "seed=0")
    f = got[1]["failure"]
    assert (f["kind"], f["epoch"], f["step"]) == ("nonfinite", 1, nan_step)
    assert rows(nan)[0] == rows(ref / "seed=1")[0] and len(rows(nan)) == 2
    assert load_checkpoint(nan / records.LAST_CKPT)["training"]["epoch"] == 1
    # the evaluation error lost nothing of seed 2's training, and is recorded as its own
    assert got[2]["epochs_completed"] == 4 and "injected evaluation bug" in (
        err / records.TRACEBACK).read_text()
    assert_as_reference(err, ref / "seed=2")
    on_disk = [records.read_json(d / records.RESULT).data for d in (ok, nan, err)]
    assert [(r["status"], r["failure"]) for r in on_disk] == [
        (r["status"], r["failure"]) for r in got]


def wait_for_rows(proc, run_dir, n, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(records.read_history(run_dir / records.HISTORY).data) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"pack ended early:\n{proc.stdout.read()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out waiting for an epoch")


def test_sigkill_of_a_pack_then_rerun_resumes_every_member_bit_identically(world):
    root, ref, proc, killed = world
    (killed / "go").touch()
    dirs = [killed / f"seed={s}" for s in SEEDS]
    for d in dirs:  # every member past its first epoch end (history lands after last.ckpt)
        wait_for_rows(proc, d, 1)
    for d in dirs:  # every member's liveness file names the pack
        lock = read_lock(d / records.RUN_LOCK)
        assert lock["pid"] == proc.pid and lock["pack_id"] == "pk"
    segments = [len(manifest(d)["segments"]) for d in dirs]
    cfgs = [config(s) for s in SEEDS]
    with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
        run_pack(members(killed, cfgs), pack_id="again")
    assert [len(manifest(d)["segments"]) for d in dirs] == segments  # nothing touched
    assert all(read_lock(d / records.RUN_LOCK)["pid"] == proc.pid for d in dirs)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not any((d / records.RESULT).exists() for d in dirs)
    at = [load_checkpoint(d / records.LAST_CKPT)["training"]["epoch"] for d in dirs]
    assert all(1 <= e < 4 for e in at)

    got = run_pack(members(killed, cfgs), pack_id="pk2")
    assert [r["status"] for r in got] == ["ok"] * 3
    for s, d, e in zip(SEEDS, dirs, at, strict=True):
        assert_as_reference(d, ref / f"seed={s}")  # every epoch once, the same numbers
        seg = manifest(d)["segments"][-1]
        assert seg["pack_id"] == "pk2" and seg["resumed_from"]["epoch"] == e
        assert manifest(d)["pack"]["id"] == "pk2"
        assert f"took over the stale run.lock of pid {proc.pid}" in (
            d / records.RUN_LOG).read_text()
