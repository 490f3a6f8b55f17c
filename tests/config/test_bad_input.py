"""Bad input is refused before any work, by name (issue 11): one table-driven battery.

Each row is a command line of ``python train.py`` (run in this process, as the user would type
it, under a temporary output root and a temporary dataset cache). Every row must be refused
(non-zero exit) with a message that names the field, and leave no folder or file behind: no
run folder, no sweep folder, no dataset cache, and no training started.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from ptychostab.cli import train as cli_train

NOT_NPZ = "__NOT_NPZ__"  # replaced by the path of a text file (the probe-file row)
GRID = ["data=tiny"]  # keeps the dry composition of a sweep small


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


# (command line, text the message must contain: the field and, where there is one, the hint)
BATTERY: list[tuple[list[str], list[str]]] = [
    # --- a group option that does not exist, or a schema node offered as one --------------------
    (["arch=hybridd"], ["arch", "stable_hybrid"]),
    (["clip=agcc"], ["clip", "agc"]),
    (["data=tinyy"], ["data", "tiny"]),
    (["trainer=smok"], ["trainer", "smoke"]),
    (["launcher=slurmm"], ["launcher", "submitit_local"]),
    (["arm=contrl"], ["arm", "control"]),
    (["+experiment=stage_aa"], ["experiment", "stage_a"]),
    (["local=nowhere"], ["local", "example"]),
    (["arch=base_arch"], ["arch", "hybrid"]),
    (["clip=base_clip"], ["clip", "norm"]),
    (["data=base_data"], ["data", "grid_lines_n64"]),
    (["trainer=base_trainer"], ["trainer", "default"]),
    (["-m", "arch=base_arch", *GRID], ["arch", "hybrid"]),
    # --- keys the schema does not have: the closest key, never the `+` form ---------------------
    (["arch.hiden_channels=8"], ["arch.hidden_channels"]),
    (["+arch.hiden_channels=8"], ["arch.hidden_channels"]),
    (["+trainer.max_epoch=3"], ["trainer.max_epochs"]),
    (["++trainer.max_epoch=3"], ["trainer.max_epochs"]),
    (["trainer.lrr=0.1"], ["trainer.lr"]),
    (["+clip.valeu=1"], ["clip.value"]),
    (["data.probe.kindd=npz"], ["data.probe.kind"]),
    (["+seeds=3"], ["seed"]),
    (["depthh=4"], ["depth"]),
    (["cluster.partion=gpu"], ["cluster.partition"]),
    (["+plan.max_memory=1"], ["plan.max_memory_gb"]),
    (["trainer.zzz=1"], ["trainer", "max_epochs", "batch_size"]),  # no close key: all of them
    # --- run-only knobs of the watching and drift issues ----------------------------------------
    (["logger=neptune"], ["logger", "tensorboard"]),
    (["logger=wandb", "logger.wandb.mode=sometimes"], ["logger.wandb.mode", "offline"]),
    (["diagnostics.every_n_epochs=-1"], ["diagnostics.every_n_epochs", "off"]),
    (["trainer.progress=loud"], ["trainer.progress", "bar"]),
    (["trainer.sync_every=10", "trainer.log_every_n_steps=15"],
     ["trainer.log_every_n_steps", "multiple"]),
    (["-m", "+trainer.max_epoch=3", "seed=0,1", *GRID], ["trainer.max_epochs"]),
    # --- a name that is not one of the allowed values ------------------------------------------
    (["clip.algorithm=agcc"], ["clip.algorithm", "agc"]),
    (["trainer.optimizer=adamm"], ["trainer.optimizer", "adamw"]),
    (["trainer.scheduler=cosin"], ["trainer.scheduler", "cosine"]),
    (["trainer.loss=mse"], ["trainer.loss", "poisson"]),
    (["trainer.accelerator=tpu"], ["trainer.accelerator", "cuda"]),
    (["arch.name=unet"], ["arch.name", "stable_hybrid"]),
    (["data.probe.kind=gaussian"], ["data.probe.kind", "defocused_disk"]),
    # --- a wrong type ----------------------------------------------------------------------------
    (["depth=four"], ["depth"]),
    (["seed=abc"], ["seed"]),
    (["trainer.lr=fast"], ["trainer.lr"]),
    (["trainer.batch_size=1.5"], ["trainer.batch_size"]),
    (["data.set_phi=maybe"], ["data.set_phi"]),
    (["strict=perhaps"], ["strict"]),
    (["trainer.betas=0.9"], ["trainer.betas"]),
    (["retry=oom"], ["retry", "[oom]"]),
    # --- numbers out of range -------------------------------------------------------------------
    (["seed=-1"], ["seed=-1", ">= 0"]),
    (["depth=0"], ["depth=0", ">= 1"]),
    (["depth=-2"], ["depth=-2"]),
    (["trainer.lr=0"], ["trainer.lr", "> 0"]),
    (["trainer.lr=-1e-3"], ["trainer.lr"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs", ">= 1"]),
    (["trainer.batch_size=0"], ["trainer.batch_size"]),
    (["trainer.weight_decay=-1"], ["trainer.weight_decay"]),
    (["trainer.momentum=1.5"], ["trainer.momentum"]),
    (["trainer.betas=[0.9,1.0]"], ["trainer.betas"]),
    (["trainer.warmup_epochs=60"], ["trainer.warmup_epochs"]),
    (["trainer.eval_batch_size=0"], ["trainer.eval_batch_size"]),
    (["trainer.sync_every=0"], ["trainer.sync_every"]),
    (["clip=norm", "clip.value=-1"], ["clip.value=-1.0", "> 0"]),
    (["clip=agc", "clip.value=0"], ["clip.value=0.0"]),
    (["clip=value"], ["clip.value is missing"]),
    (["clip.value=3"], ["clip.value", "clip.algorithm=none"]),
    (["arch.hidden_channels=0"], ["arch.hidden_channels"]),
    (["arch.n_modes=0"], ["arch.n_modes"]),
    (["arch.corners=3"], ["arch.corners"]),
    (["arch.max_hidden_channels=4"], ["arch.max_hidden_channels"]),
    (["arch=layerscale_hybrid", "arch.layerscale_init=0"], ["arch.layerscale_init"]),
    (["failure.collapse_ssim=2"], ["failure.collapse_ssim"]),
    (["failure.patience_steps=0"], ["failure.patience_steps"]),
    (["plan.max_memory_gb=0"], ["plan.max_memory_gb"]),
    (["sweep=a/b"], ["sweep="]),
    (["sweep="], ["sweep="]),
    # --- data and the probe file ----------------------------------------------------------------
    (["data.N=48"], ["data.N", "power of two"]),
    (["data.size=16"], ["data.size"]),
    (["data.nphotons=0"], ["data.nphotons"]),
    (["data.outer_offset_test=1"], ["data.outer_offset_test"]),
    (["data.probe.radius=0.9"], ["data.probe.radius"]),
    (["data.probe.kind=npz"], ["data.probe.path"]),
    (["data.probe.kind=npz", "data.probe.path=/nonexistent/probe.npz"],
     ["data.probe.path", "not found"]),
    (["data.probe.kind=npz", f"data.probe.path={NOT_NPZ}"], ["data.probe.path", "not an NPZ"]),
    # --- networks that cannot be built, memory over the budget, a missing device ---------------
    (["arch.levels=8", "data=grid_lines_n64"], ["cannot be built", "levels"]),
    (["plan.max_memory_gb=1e-6"], ["plan.max_memory_gb"]),
    (["-m", "seed=0,1", "plan.max_memory_gb=1e-6", *GRID], ["plan.max_memory_gb"]),
    (["trainer.cuda_graphs=true", "trainer.accelerator=cpu"], ["trainer.cuda_graphs"]),
    *([] if _cuda() else [(["trainer.accelerator=cuda"], ["trainer.accelerator=cuda", "CUDA"])]),
    # --- grids and seeds -------------------------------------------------------------------------
    (["-m", "seed=range(0)", *GRID], ["seed", "empty"]),
    (["-m", "seed=[]", *GRID], ["seed"]),
    (["seed=range(0)"], ["seed"]),
    (["-m", "seed=-1,0", *GRID], ["seed=-1"]),
    (["-m", "clip=norm", "clip.value=-1,1", *GRID], ["clip.value=-1.0"]),
    # --- launcher and folders -------------------------------------------------------------------
    (["cluster.timeout_min=1", "cluster.signal_delay_s=120"], ["cluster.timeout_min=1"]),
    (["-m", "launcher=slurm", "hydra.launcher.timeout_min=1", "seed=0", *GRID],
     ["timeout_min", "signal_delay_s"]),
    (["cluster.array_parallelism=0"], ["cluster.array_parallelism"]),
    (["cluster.mem_gb=-1"], ["cluster.mem_gb"]),
    (["cluster.gpus_per_node=-1"], ["cluster.gpus_per_node"]),
    (["cluster.max_num_timeout=-1"], ["cluster.max_num_timeout"]),
    (["cluster.tasks_per_node=0"], ["cluster.tasks_per_node"]),
    (["-m", "hydra.sweep.subdir=${hydra.job.num}", "seed=0,1", *GRID],
     ["hydra.sweep.subdir", "<arm_id>/seed=<seed>"]),
    (["-m", "hydra.sweep.subdir=${hydra.job.override_dirname}", "seed=0,1", *GRID],
     ["hydra.sweep.subdir", "<arm_id>/seed=<seed>"]),
    # --- retry -----------------------------------------------------------------------------------
    (["retry=[ok]"], ["retry", "oom", "exception"]),
    (["retry=[infra]"], ["retry", "not final"]),
    (["retry=[oomm]"], ["retry", "oom"]),
    (["-m", "retry=[timeout]", "seed=0,1", *GRID], ["retry"]),
]


# Rows that repeat a mechanism another row already covers: run with -m slow (the default suite
# keeps about 75 rows, ~1 s each on a loaded 2-core machine).
REPEATS = {
    "clip=base_clip", "data=base_data", "trainer=base_trainer", "++trainer.max_epoch=3",
    "+clip.valeu=1", "cluster.partion=gpu", "+plan.max_memory=1", "trainer.loss=mse",
    "trainer.scheduler=cosin", "strict=perhaps", "data.set_phi=maybe", "depth=-2",
    "trainer.lr=-1e-3", "trainer.batch_size=0", "trainer.weight_decay=-1",
    "trainer.eval_batch_size=0", "trainer.sync_every=0", "arch.n_modes=0",
    "failure.patience_steps=0", "cluster.mem_gb=-1", "cluster.gpus_per_node=-1",
    "cluster.max_num_timeout=-1", "sweep=", "data.nphotons=0", "data.outer_offset_test=1",
    "retry=[oomm]"}


def _id(row: tuple[list[str], list[str]]) -> str:
    return " ".join(row[0])[:60]


ROWS = [pytest.param(*row, id=_id(row),
                     marks=[pytest.mark.slow] if " ".join(row[0]) in REPEATS else [])
        for row in BATTERY]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_the_battery_has_the_issues_breadth():
    assert len(BATTERY) >= 72 and len(ROWS) - len(REPEATS) >= 70
    assert REPEATS <= {" ".join(r[0]) for r in BATTERY}


@pytest.mark.parametrize("args,needles", ROWS)
def test_bad_input_is_refused_before_any_work_by_name(args, needles, tmp_path, monkeypatch,
                                                     capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    not_npz = tmp_path / "probe.txt"
    not_npz.write_text("probeGuess = [[1, 0], [0, 1]]\n")
    args = [a.replace(NOT_NPZ, str(not_npz)) for a in args]
    monkeypatch.setenv("PTYCHOSTAB_CACHE", str(cache))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory shows up
    started: list = []

    def _work(*a, **k):  # training would start here: the row was not refused
        started.append(a)
        return {"status": "ok"}

    import ptychostab.runs.job as job

    monkeypatch.setattr(job, "run_job", _work)
    monkeypatch.setattr(sys, "argv", ["train.py", *args, f"paths.output_root={out}"])
    GlobalHydra.instance().clear()
    code = 0
    try:
        cli_train.main()
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        message = "" if isinstance(err.code, int) or err.code is None else str(err.code)
    else:
        message = ""
    finally:
        GlobalHydra.instance().clear()
    captured = capsys.readouterr()
    text = "\n".join([message, captured.err, captured.out])
    assert not started, f"training started:\n{text[-2000:]}"
    assert code != 0, f"accepted:\n{text[-2000:]}"
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-3000:]}"
    assert "To append to your config" not in text  # never the `+` form that bypasses the schema
    assert _tree(out) == [] and _tree(cache) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.txt"]
