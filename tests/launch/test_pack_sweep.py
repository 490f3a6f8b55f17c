"""Packed sweeps (issue 14, the sweep half): ``pack`` is a run-only key; the preflight groups
the unfinished seeds of each arm into packs (packs.json, plan.csv's ``pack`` column); the
pack's leader composes its members' configs and calls ``ptychostab.runs.pack.run_pack``; the
others' jobs are no-ops; the launchers submit only leaders; the dry run sizes and refuses packs;
the aggregator reads the manifest's ``pack`` block.

The end-to-end sweep uses the real engine (src/ptychostab/runs/pack.py) when it exists, else a
fake ``run_pack`` that writes each member's records (``PACK_FAKE=1``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from _fixtures import (
    FAST,
    PY,
    TINY,
    FakeExecutor,
    result_files,
    run_dirs,
    status_of,
    train,
    write_run,
)
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from ptychostab import config as cfgmod
from ptychostab import identity
from ptychostab.analysis import sweepdir
from ptychostab.cli.plan import build_plan
from ptychostab.config import REPO_ROOT
from ptychostab.launch import packs
from ptychostab.launch import plan as planmod
from ptychostab.launch import preflight as callbacks
from ptychostab.runs import records

REAL_ENGINE = importlib.util.find_spec("ptychostab.runs.pack") is not None

# A wrapper around train.py that logs what each job's task received, what run_job and run_pack
# were called with; with PACK_FAKE=1 it installs a fake engine that writes records.
WRAPPER = textwrap.dedent('''
    import json, os, sys, types
    from dataclasses import dataclass
    from pathlib import Path
    from omegaconf import OmegaConf

    LOG = Path(os.environ["PACK_LOG"])

    def note(**event):
        with open(LOG, "a") as fh:
            fh.write(json.dumps(event, default=str) + "\\n")

    if os.environ.get("PACK_FAKE") == "1":
        from ptychostab.runs import records

        mod = types.ModuleType("ptychostab.runs.pack")

        @dataclass
        class Member:
            cfg: object
            run_dir: Path
            arm: dict
            arm_id: str
            overrides: list

        def run_pack(members, *, pack_id):
            out = []
            block = {"id": pack_id, "size": len(members),
                     "members": [Path(m.run_dir).name for m in members]}
            for m in members:
                m.run_dir.mkdir(parents=True, exist_ok=True)
                records.atomic_write_json(m.run_dir / records.MANIFEST, {
                    "schema_version": records.SCHEMA_VERSION, "sweep": m.cfg.sweep,
                    "arm": m.arm, "arm_id": m.arm_id, "seed": m.cfg.seed,
                    "overrides": m.overrides, "config": OmegaConf.to_container(m.cfg),
                    "pack": block})
                rec = records.result_record(
                    status="ok", sweep=m.cfg.sweep, arm_id=m.arm_id, seed=m.cfg.seed,
                    failure_info=None, metrics={}, metrics_best=None, grad_norm={},
                    epochs_completed=1, global_step=1, wall_s=1.0, params={},
                    peak_memory_bytes=None)
                records.atomic_write_json(m.run_dir / records.RESULT, rec)
                out.append(rec)
            return out

        mod.Member, mod.run_pack = Member, run_pack
        sys.modules["ptychostab.runs.pack"] = mod

    import ptychostab.runs.pack as pack_mod
    import ptychostab.runs.job as job_mod
    import ptychostab.cli.train as T
    from ptychostab import config as cfgmod

    real_pack, real_job, real_run = pack_mod.run_pack, job_mod.run_job, T.run

    def spy_pack(members, *, pack_id):
        for m in members:
            note(event="member", pack_id=pack_id, run_dir=str(m.run_dir), arm_id=m.arm_id,
                 overrides=m.overrides, arm=m.arm, cfg=OmegaConf.to_container(m.cfg))
        return real_pack(members, pack_id=pack_id)

    def spy_job(cfg, **kw):
        note(event="run_job", run_dir=str(kw["run_dir"]))
        return real_job(cfg, **kw)

    def spy_run(cfg):
        from hydra.core.hydra_config import HydraConfig
        note(event="task", run_dir=HydraConfig.get().runtime.output_dir,
             cfg=OmegaConf.to_container(cfgmod.to_plain(cfg)))
        return real_run(cfg)

    pack_mod.run_pack, job_mod.run_job, T.run = spy_pack, spy_job, spy_run
    T.main()
''')


def _train_logged(args, out: Path, tmp_path: Path, *, fake: bool):
    wrapper = tmp_path / "wrapped_train.py"
    wrapper.write_text(WRAPPER)
    log = tmp_path / f"events-{len(list(tmp_path.glob('events-*')))}.jsonl"
    env = {"PACK_LOG": str(log), "PACK_FAKE": "1" if fake else "0"}
    cmd = [PY, str(wrapper), *args, f"paths.output_root={out}"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    full_env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, text=True, timeout=900,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return res, events


SWEEP_2x4 = ["-m", "arch=hybrid,stable_hybrid", "seed=range(4)", "pack=3", *FAST]


@pytest.fixture(scope="module")
def packed_sweep(tmp_path_factory):
    """2 arms x 4 seeds with pack=3 through Hydra's basic launcher (real engine if present)."""
    tmp = tmp_path_factory.mktemp("packed")
    res, events = _train_logged(SWEEP_2x4, tmp / "out", tmp, fake=not REAL_ENGINE)
    assert res.returncode == 0, res.stdout[-5000:]
    return tmp / "out" / "default", res, events


def test_2_arms_x_4_seeds_pack_3_gives_4_jobs_and_8_records(packed_sweep):
    sweep_dir, res, events = packed_sweep
    assert len(result_files(sweep_dir)) == 8
    assert all(records.is_final(status_of(d)) for d in run_dirs(sweep_dir))
    members = [e for e in events if e["event"] == "member"]
    packs = sorted({e["pack_id"] for e in members})
    alone = [e for e in events if e["event"] == "run_job"]
    # 4 jobs train: 2 packs of 3 seeds (0, 1, 2) and the lone seed 3 of each arm
    assert len(packs) == 2 and len(members) == 6 and len(alone) == 2
    assert all(p.endswith("-seeds-0-1-2") for p in packs)
    assert sorted(Path(e["run_dir"]).name for e in alone) == ["seed=3", "seed=3"]
    assert res.stdout.count("packed into") == 4  # the non-leaders' jobs: no-ops
    data = json.loads((sweep_dir / sweepdir.PACKS_JSON).read_text())
    assert data["pack"] == 3 and [p["id"] for p in data["packs"]] == packs
    assert [m["seed"] for m in data["packs"][0]["members"]] == [0, 1, 2]
    with open(sweep_dir / sweepdir.PLAN_CSV) as fh:
        import csv
        rows = list(csv.DictReader(fh))
    assert sum(bool(r["pack"]) for r in rows) == 6 and sum(not r["pack"] for r in rows) == 2
    for run in run_dirs(sweep_dir):
        manifest = json.loads((run / records.MANIFEST).read_text())
        if run.name == "seed=3":
            assert not manifest.get("pack")
        else:
            assert manifest["pack"]["size"] == 3 and manifest["pack"]["id"] in packs


def test_member_configs_equal_their_own_jobs_composed_configs(packed_sweep):
    """The leader composes each member's config; the member's own (no-op) job got one from
    Hydra: they are the same, key for key, and so are run folder, arm id and overrides."""
    sweep_dir, _, events = packed_sweep
    own = {e["run_dir"]: e["cfg"] for e in events if e["event"] == "task"}
    members = [e for e in events if e["event"] == "member"]
    assert len(own) == 8
    for m in members:
        assert m["cfg"] == own[m["run_dir"]], m["run_dir"]
        assert Path(m["run_dir"]).parent.name == m["arm_id"]
        assert m["arm_id"] == identity.arm_id(OmegaConf.create(m["cfg"]))
        assert f"seed={m['cfg']['seed']}" in m["overrides"]
    # different seeds, one arm per pack
    for pid in {m["pack_id"] for m in members}:
        group = [m for m in members if m["pack_id"] == pid]
        assert len({m["arm_id"] for m in group}) == 1
        assert [m["cfg"]["seed"] for m in group] == [0, 1, 2]


@pytest.mark.slow  # 17 s; the unpacked rerun is in the default suite (test_cli)
def test_rerun_of_a_packed_sweep_trains_nothing_and_regroups_nothing(packed_sweep, tmp_path):
    sweep_dir, _, _ = packed_sweep
    before = {p: p.read_bytes() for p in result_files(sweep_dir)}
    res, events = _train_logged(SWEEP_2x4, sweep_dir.parent, tmp_path, fake=not REAL_ENGINE)
    assert res.returncode == 0, res.stdout[-3000:]
    assert not [e for e in events if e["event"] == "member"]
    assert json.loads((sweep_dir / sweepdir.PACKS_JSON).read_text())["packs"] == []
    assert {p: p.read_bytes() for p in result_files(sweep_dir)} == before


# --- the preflight's grouping --------------------------------------------------------------------
def _grid(tmp_path, *extra):
    return ["seed=range(5)", "data=tiny", f"paths.output_root={tmp_path}", *extra]


def test_grouping_in_grid_order_regroups_unfinished_seeds_and_never_packs_final_runs(tmp_path):
    plan = build_plan(_grid(tmp_path, "pack=2"), describe=False)
    assert [p.seeds for p in plan.packs] == [[0, 1], [2, 3]]  # seed 4 alone: no pack
    assert packs.pack_jobs(plan) == 3
    aid = plan.jobs[0].arm_id
    assert plan.packs[0].pack_id == f"{aid}-seeds-0-1" and plan.packs[0].leader.seed == 0
    s = {j.seed: j for j in plan.jobs}
    write_run(s[1].run_dir, status="ok", epochs=1)  # final
    write_run(s[3].run_dir, status="nonfinite", epochs=1)  # final (instability)
    write_run(s[2].run_dir, status="timeout", epochs=1)  # not final: resumed, packed again
    again = build_plan(_grid(tmp_path, "pack=2"), describe=False)
    assert [p.seeds for p in again.packs] == [[0, 2]]
    assert again.pack_of(s[4].overrides) is None and packs.pack_jobs(again) == 2
    assert again.pack_of(s[2].overrides).pack_id == f"{aid}-seeds-0-2"
    retry = build_plan(_grid(tmp_path, "pack=2", "retry=[nonfinite]"), describe=False)
    assert [p.seeds for p in retry.packs] == [[0, 2], [3, 4]]  # a retried ending is unfinished


def test_packs_keep_arms_apart_and_pack_1_packs_nothing(tmp_path):
    grid = ["arch=hybrid,stable_hybrid", "seed=range(3)", "data=tiny",
            f"paths.output_root={tmp_path}"]
    plan = build_plan([*grid, "pack=3"], describe=False)
    assert len(plan.packs) == 2 and all(len({j.arm_id for j in p.jobs}) == 1
                                         for p in plan.packs)
    assert build_plan(grid, describe=False).packs == []


def test_preflight_writes_packs_json_and_pack_1_removes_a_stale_one(tmp_path):
    plan = build_plan(_grid(tmp_path, "pack=2"), describe=False)
    path = packs.write_packs(plan)
    data = json.loads(path.read_text())
    first = data["packs"][0]
    assert first["leader"] == first["members"][0]["run_dir"] == f"{plan.jobs[0].arm_id}/seed=0"
    assert first["members"][1]["overrides"] == plan.jobs[1].overrides
    found = packs.find_pack(plan.sweep_dir, plan.jobs[1].run_dir)
    assert found is not None and found[1] == 1 and found[0]["id"] == first["id"]
    assert packs.find_pack(plan.sweep_dir, plan.jobs[4].run_dir) is None  # the lone seed
    unpacked = build_plan(_grid(tmp_path), describe=False)
    assert packs.write_packs(unpacked) is None and not path.exists()


def test_pack_cannot_be_swept(tmp_path):
    with pytest.raises(planmod.PlanError, match="pack takes one value"):
        build_plan(_grid(tmp_path, "pack=1,2"), describe=False)


# --- run-only, validation, refusals --------------------------------------------------------------
def test_pack_is_run_only_and_validated():
    base = cfgmod.compose(["data=tiny"])
    packed = cfgmod.compose(["data=tiny", "pack=5"])
    assert identity.arm_id(packed) == identity.arm_id(base)
    assert identity.identity_config(packed) == identity.identity_config(base)
    assert "pack" not in identity.arm_dict(packed, ["pack=5", "data=tiny"])
    assert "pack" in identity.RUN_ONLY_TOP
    with pytest.raises(cfgmod.ConfigError, match=r"pack=0: must be an integer >= 1"):
        cfgmod.compose(["pack=0"])


def test_packed_sweep_refuses_a_custom_subdir(tmp_path):
    res = train(["-m", "seed=0,1", "pack=2",
                 'hydra.sweep.subdir="mine/${arm_id:}/seed=${job:seed}"',
                 *FAST], tmp_path)
    assert res.returncode != 0
    assert "hydra.sweep.subdir=mine/" in res.stdout and "with pack=2" in res.stdout
    assert "stay apart only under the default scheme" in res.stdout
    assert "Nothing was launched" in res.stdout and not (tmp_path / "default").exists()
    # the default scheme itself (also spelt with ${seed}) is fine
    cfg = cfgmod.compose(["pack=2"], return_hydra_config=True)
    assert cfgmod.pack_problems(cfg) == []


def test_dry_run_shows_packs_and_refuses_packs_over_the_memory_budget(tmp_path, capsys):
    from ptychostab.cli.plan import main

    grid = ["seed=range(3)", *TINY, f"paths.output_root={tmp_path}"]
    plan = build_plan([*grid, "pack=3"])
    (pack,) = plan.packs
    arm_gb = plan.arms[pack.arm_id].memory_gb
    assert pack.memory_gb == pytest.approx(3 * arm_gb + pack.dataset_gb)
    assert 0 < pack.dataset_gb < arm_gb
    limit = 2 * arm_gb  # one seed fits, three do not
    assert main(["--no-calibrate", *grid, "pack=3", f"plan.max_memory_gb={limit}"]) == 1
    out, err = capsys.readouterr()
    assert f"pack {pack.pack_id}: 3 seeds x" in err and f"{pack.memory_gb:.2f} GB" in err
    assert "packs (pack=3)" in out and "REFUSED" in out
    assert main(["--no-calibrate", *grid, "pack=1", f"plan.max_memory_gb={limit}"]) == 0  # fits
    capsys.readouterr()


# --- the launchers submit only pack leaders ------------------------------------------------------
def _launcher(plan, monkeypatch, outcome):
    from hydra_plugins.ptychostab_launcher.launcher import PtychoSlurmLauncher

    cfg = cfgmod.compose(["launcher=slurm"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    launcher = PtychoSlurmLauncher(**params)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(plan.sweep_dir)}}})
    fake = FakeExecutor(outcome)
    monkeypatch.setattr(launcher, "_executor", lambda submitit: fake)
    monkeypatch.setitem(callbacks._STATE, "plan", plan)
    return launcher, fake


def test_launcher_submits_one_job_per_pack(tmp_path, monkeypatch):
    grid = ["arch=hybrid,stable_hybrid", "seed=range(4)", "data=tiny", "pack=3",
            f"paths.output_root={tmp_path}"]
    plan = build_plan(grid, describe=False)
    write_run(plan.jobs[5].run_dir, status="ok", epochs=1)  # stable_hybrid seed 1: final
    plan = build_plan(grid, describe=False)
    ok = JobReturn(overrides=[], status=JobStatus.COMPLETED)
    ok.return_value = "ok"
    launcher, fake = _launcher(plan, monkeypatch, lambda o: ok)
    returns = launcher.launch([j.overrides for j in plan.jobs], initial_job_idx=0)
    # hybrid: pack (0,1,2) + lone 3; stable_hybrid: 1 is final, pack (0,2,3)
    assert [o[1] for o in fake.submitted] == ["seed=0", "seed=3", "seed=0"]
    assert len(returns) == 8 and all(r.status == JobStatus.COMPLETED for r in returns)
    assert returns[1].return_value.startswith("packed into ")
    assert "seed=0" in returns[1].return_value
    assert returns[5].return_value == "skipped (ok)"


def test_a_killed_pack_job_is_recorded_for_every_member(tmp_path, monkeypatch):
    from submitit.core.utils import UncompletedJobError

    grid = ["seed=range(2)", "data=tiny", "pack=2", f"paths.output_root={tmp_path}"]
    plan = build_plan(grid, describe=False)
    for job in plan.jobs:  # both had started
        write_run(job.run_dir, status=None, epochs=1, seed=job.seed)
    launcher, fake = _launcher(plan, monkeypatch,
                               lambda o: UncompletedJobError("killed (state: CANCELLED)"))
    returns = launcher.launch([j.overrides for j in plan.jobs], initial_job_idx=0)
    assert len(fake.submitted) == 1
    assert [status_of(j.run_dir) for j in plan.jobs] == ["preempted", "preempted"]
    assert all(r.status == JobStatus.COMPLETED for r in returns)


# --- the aggregator: packed runs read like unpacked ones -----------------------------------------
def _synthetic(sweep_dir: Path, factory, packed: bool) -> None:
    arms = (factory.CONTROL, factory.ARCH_FIX)
    for arm in arms:
        outcomes = [0.02, 0.03, "nonfinite", 0.025]
        factory.write_arm(sweep_dir, arm, outcomes)
        if packed:  # seeds 0-2 in one pack, seed 3 alone
            aid = factory.arm_id_of(arm)
            block = {"id": f"{aid}-seeds-0-1-2", "size": 3,
                     "members": [f"seed={k}" for k in range(3)]}
            for k in range(3):
                path = sweep_dir / aid / f"seed={k}" / records.MANIFEST
                manifest = json.loads(path.read_text())
                records.atomic_write_json(path, {**manifest, "pack": block})


def test_packed_sweep_aggregates_like_an_unpacked_one(tmp_path, factory):
    from ptychostab.analysis.collect import collect

    _synthetic(tmp_path / "plain" / "s", factory, packed=False)
    _synthetic(tmp_path / "packed" / "s", factory, packed=True)
    plain = collect([tmp_path / "plain" / "s"]).runs
    packed = collect([tmp_path / "packed" / "s"]).runs
    assert list(plain["pack_size"]) == [1] * len(plain)
    assert sorted(packed["pack_size"]) == [1, 1, 3, 3, 3, 3, 3, 3]
    drop = ["pack_size", "pack_id", "_path"]
    assert plain.drop(columns=drop).equals(packed.drop(columns=drop))


def test_report_gives_time_to_failure_per_pack_size_and_marks_shared_memory(tmp_path, factory):
    from ptychostab.analysis.collect import collect
    from ptychostab.report import tables as T

    _synthetic(tmp_path / "s", factory, packed=True)
    runs = collect([tmp_path / "s"]).runs
    lines = "\n".join(T.pack_section(runs))
    assert "## Packed runs" in lines and "shared" in lines
    assert "| 3 |" in lines and "| 1 |" in lines
    unpacked = tmp_path / "u"
    _synthetic(unpacked, factory, packed=False)
    assert T.pack_section(collect([unpacked]).runs) == []  # nothing for an unpacked study


# --- on a real cluster (marker slurm; make slurm-up gives the node one count-only GPU) ----------
def _cluster_up() -> bool:
    import shutil

    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed", "alloc"))


def _intervals(sweep_dir: Path, leaders: list[Path]) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each pack's job: sacct, else the manifests' segment start
    and the last result.json written by the pack."""
    import datetime as dt

    array = {json.loads((d / records.MANIFEST).read_text())["slurm"]["SLURM_ARRAY_JOB_ID"]
             for d in leaders}
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(sorted(array)),
                          "-o", "JobID,Start,End"], capture_output=True, text=True)
    out = []
    for line in res.stdout.splitlines():
        job, start, end = line.split("|")[:3]
        if "_" in job and start not in ("", "Unknown", "None") and end not in ("", "Unknown"):
            out.append((dt.datetime.fromisoformat(start).timestamp(),
                        dt.datetime.fromisoformat(end).timestamp()))
    if len(out) == len(leaders):
        return out
    out = []
    for d in leaders:
        manifest = json.loads((d / records.MANIFEST).read_text())
        start = dt.datetime.fromisoformat(manifest["segments"][0]["start_time"]).timestamp()
        members = [d.parent / m for m in manifest["pack"]["members"]]
        out.append((start, max((m / records.RESULT).stat().st_mtime for m in members)))
    return out


@pytest.mark.slurm
@pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (make slurm-up)")
def test_slurm_packs_ask_for_the_one_gpu_and_never_run_two_at_once(tmp_path):
    """6 seeds, pack=2: 3 array tasks, each asking for one GPU (the launcher's default); the
    node has one (count-only gres), so SLURM runs the packs one after the other."""
    cluster = ["launcher=slurm", "cluster.cpus_per_task=1", "cluster.mem_gb=null",
               "cluster.timeout_min=20", "cluster.signal_delay_s=30"]  # gpus_per_node: default 1
    args = ["-m", *cluster, "seed=range(6)", "pack=2", *FAST, "trainer.max_epochs=2"]
    res = train(args, tmp_path, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "Submitted 3 job(s)" in res.stdout
    sweep_dir = tmp_path / "default"
    assert len(result_files(sweep_dir)) == 6
    leaders = []
    for d in run_dirs(sweep_dir):
        manifest = json.loads((d / records.MANIFEST).read_text())
        assert manifest["pack"]["size"] == 2 and records.is_final(status_of(d))
        if manifest["pack"]["members"][0] == d.name:  # run folder names, leader first
            leaders.append(d)
    assert len(leaders) == 3
    spans = sorted(_intervals(sweep_dir, leaders))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two packs ran at once: {spans}"
    rerun = train(args, tmp_path, timeout=600)
    assert rerun.returncode == 0 and "Submitted" not in rerun.stdout
