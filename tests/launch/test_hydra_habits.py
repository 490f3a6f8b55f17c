"""Hydra and SLURM habits that must keep working (issue 11): a site launcher file, Hydra's
folder settings, `--cfg hydra --resolve`, schema nodes not offered as options, and a sweep
whose folder cannot be prepared."""

from __future__ import annotations

import errno
import stat
import textwrap
from pathlib import Path

import pytest
from _fixtures import FakeExecutor, preflight, train
from omegaconf import OmegaConf

from ptychostab import config as cfgmod
from ptychostab.cli.plan import build_plan
from ptychostab.launch import plan as planmod
from ptychostab.launch import preflight as callbacks
from ptychostab.launch.sweep_lock import SweepLock


def _site(tmp_path: Path, base: str) -> Path:
    """A user's own config dir with a hydra/launcher site file based on ``base``."""
    root = tmp_path / "site"
    (root / "hydra" / "launcher").mkdir(parents=True)
    (root / "hydra" / "launcher" / "mysite.yaml").write_text(textwrap.dedent(f"""\
        defaults:
          - {base}
        partition: sitepart
        account: siteacct
        qos: siteqos
        timeout_min: 600
        """))
    return root


def _launcher(overrides: list[str]) -> dict:
    cfg = cfgmod.compose(overrides, return_hydra_config=True)
    out = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize("base", ["ptychostab_slurm", "submitit_slurm"])
def test_site_launcher_file_wins_over_the_cluster_node(tmp_path, base):
    site = _site(tmp_path, base)
    params = _launcher(["launcher=slurm", "hydra/launcher=mysite",
                        f"hydra.searchpath=[file://{site}]", "cluster.partition=fromcluster",
                        "cluster.timeout_min=30", "cluster.gpus_per_node=3"])
    assert (params["partition"], params["account"], params["qos"], params["timeout_min"]) == (
        "sitepart", "siteacct", "siteqos", 600)
    # our launcher either way (skips finished runs, waits for all, records killed jobs)
    assert params["_target_"].endswith("PtychoSlurmLauncher")
    if base == "ptychostab_slurm":  # what the site leaves out still comes from cluster.*
        assert params["gpus_per_node"] == 3
        assert params["setup"][0].startswith("export OMP_NUM_THREADS=")


def test_cluster_node_drives_the_launcher_without_a_site_file():
    params = _launcher(["launcher=slurm", "cluster.partition=gpu", "cluster.comment=study",
                        "cluster.exclude=node7", "cluster.timeout_min=90"])
    assert (params["partition"], params["comment"], params["exclude"], params["timeout_min"],
            params["tasks_per_node"]) == ("gpu", "study", "node7", 90, 1)


def test_cfg_hydra_resolve_works(tmp_path):
    res = train(["--cfg", "hydra", "--resolve"], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"dir: {tmp_path}/default/hybrid_none_d4-" in res.stdout
    assert "${" not in res.stdout.split("help:")[0]  # the folders are resolved


def test_schema_nodes_are_not_group_options(tmp_path):
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo
    assert not {"arch", "clip", "data", "trainer"} & set(repo)  # only the whole schema
    with pytest.raises(Exception, match="base_arch"):
        cfgmod.compose(["arch=base_arch"], check=False)
    plan = build_plan(["arch=glob(*)", "data=tiny", f"paths.output_root={tmp_path}"],
                      describe=False)
    assert sorted({a.fields["arch"] for a in plan.arms.values()}) == cfgmod.group_options("arch")


def test_help_lists_only_real_options(tmp_path):
    res = train(["--help"], None)
    assert res.returncode == 0
    assert "base_" not in res.stdout
    assert "arch: " + ", ".join(cfgmod.group_options("arch")) in res.stdout


# --- the preflight, in this process (no job runs) ---------------------------------------------


def test_sweep_mode_is_honoured(tmp_path):
    plan = preflight(["seed=0,1", "data=tiny", f"paths.output_root={tmp_path}",
                       "+hydra.sweep.mode=750"])
    assert stat.S_IMODE(plan.sweep_dir.stat().st_mode) == 0o750


def test_sweep_mode_is_honoured_by_the_launcher_too(tmp_path, monkeypatch):
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.ptychostab_launcher.launcher import PtychoLocalLauncher

    done = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED)
    done.return_value = "ok"
    monkeypatch.setitem(callbacks._STATE, "plan", None)
    launcher = PtychoLocalLauncher(submitit_folder=str(tmp_path / "s"))
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sw"),
                                                            "mode": 770}}})
    executor = FakeExecutor(lambda overrides: done)  # its job leaves a result: over at once
    monkeypatch.setattr(launcher, "_executor", lambda submitit: executor)
    (ret,) = launcher.launch([["seed=0"]], initial_job_idx=0)
    assert ret.return_value == "ok"
    assert stat.S_IMODE((tmp_path / "sw").stat().st_mode) == 0o770


@pytest.mark.parametrize("subdir", ["${hydra.job.num}", "${hydra.job.override_dirname}",
                                    "${now:%H-%M-%S}"])
def test_other_sweep_subdirs_are_refused_with_the_folder_scheme(tmp_path, subdir):
    with pytest.raises(callbacks.SweepRefused) as info:
        preflight(["seed=0,1", "data=tiny", f"paths.output_root={tmp_path}",
                    f"hydra.sweep.subdir={subdir}"])
    text = str(info.value)
    assert "hydra.sweep.subdir" in text and "<arm_id>/seed=<seed>" in text
    assert "same folder" not in text  # never the false duplicate-folder message
    assert not any(tmp_path.iterdir())


def test_a_prefixed_run_folder_is_accepted(tmp_path):
    plan = preflight(["seed=0,1", "data=tiny", f"paths.output_root={tmp_path}",
                       'hydra.sweep.subdir="mine/${arm_id:}/seed=${job:seed}"'])
    assert {j.run_dir.parent.parent.name for j in plan.jobs} == {"mine"}


@pytest.mark.parametrize("where", ["lock", "plan.csv"])
def test_an_oserror_while_preparing_refuses_the_sweep(tmp_path, monkeypatch, where):
    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "lock":
        monkeypatch.setattr(SweepLock, "acquire", boom)
    else:
        monkeypatch.setattr(planmod, "write_csv", boom)
    with pytest.raises(callbacks.SweepRefused) as info:
        preflight(["seed=0,1", "data=tiny", f"paths.output_root={tmp_path}"])
    assert "No space left on device" in str(info.value)
    assert "Nothing was launched" in str(info.value)
    assert callbacks.current_plan() is None and callbacks._STATE["lock"] is None


def test_the_time_limit_check_reads_the_launcher_settings(tmp_path):
    with pytest.raises(callbacks.SweepRefused, match="hydra.launcher.timeout_min=1"):
        preflight(["launcher=slurm", "hydra.launcher.timeout_min=1", "seed=0", "data=tiny",
                    f"paths.output_root={tmp_path}"])
    assert not any(tmp_path.iterdir())


def test_a_second_single_run_is_refused_before_hydra_touches_the_live_runs_folder(tmp_path):
    """Two identical single runs at once: the second names the holder and writes nothing."""
    import datetime
    import json
    import os
    import socket

    from _fixtures import TINY

    from ptychostab import identity

    args = ["seed=4", *TINY]
    cfg = cfgmod.compose([*args, f"paths.output_root={tmp_path}"])
    run_dir = identity.run_dir(cfg)
    run_dir.mkdir(parents=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": None,
              "pack_id": None, "start_time": "2026-12-01T00:00:00+00:00",
              "heartbeat_time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "token": "t"}
    (run_dir / "run.lock").write_text(json.dumps(holder))
    before = sorted(p.name for p in run_dir.iterdir())
    proc = train(args, tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in proc.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no .hydra, no log
