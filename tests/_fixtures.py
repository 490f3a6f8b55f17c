"""Helpers shared by the sweep-framework tests (tests/{config,launch,launcher,monitor,cli}/):
real ``train.py`` runs in a subprocess, run-folder readers, and submitit doubles."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from ptychostab.config import REPO_ROOT
from ptychostab.runs import records

PY = sys.executable
# A network and data small enough for a CPU job of a few seconds (the model knobs shrink the
# generator; data.size=64 keeps 81 train / 16 test patterns of the tiny preset's N=32).
TINY = ["data=tiny", "trainer=smoke", "trainer.max_epochs=1", "arch.hidden_channels=4",
        "arch.n_modes=4"]
FAST = [*TINY, "data.size=64"]


def preflight(overrides: list[str]):
    """The sweep preflight of ``python train.py -m <overrides>``, in this process (no job runs):
    the plan it builds; the sweep lock is released and Hydra cleared afterwards."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from ptychostab import config as cfgmod
    from ptychostab.launch import preflight as callbacks

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(cfgmod.CONF_DIR), version_base="1.3",
                                   job_name=cfgmod.CONFIG_NAME):
            loader = GlobalHydra.instance().config_loader()
            master = loader.load_configuration(cfgmod.CONFIG_NAME, overrides=overrides,
                                               run_mode=RunMode.MULTIRUN)
            return callbacks.preflight(master)
    finally:
        callbacks.release()
        GlobalHydra.instance().clear()


def train(args: list[str], out: Path | str | None, *, timeout: float = 600,
          env: dict | None = None, wait: bool = True):
    """``python train.py <args> paths.output_root=<out>`` from the repository root."""
    cmd = [PY, "train.py", *args] + ([f"paths.output_root={out}"] if out is not None else [])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, text=True, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in Path(sweep_dir).glob("*/seed=*") if p.is_dir())


def result_files(sweep_dir: Path) -> list[Path]:
    return sorted(Path(sweep_dir).glob("*/seed=*/" + records.RESULT))


def status_of(run_dir: Path) -> str | None:
    loaded = records.read_json(Path(run_dir) / records.RESULT)
    return loaded.data.get("status") if loaded.ok else None


def snapshot(paths: list[Path]) -> dict[Path, tuple[int, bytes]]:
    """mtime_ns and content of each file: a rewrite changes the first, a retrain the second."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def wait_for(predicate, timeout: float, every: float = 0.5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def write_run(run_dir: Path, *, status: str | None, epochs: int = 0, epoch_s: float = 10.0,
              seed: int = 0, sweep: str = "default", arm_id: str = "x") -> None:
    """A fake run folder: manifest, ``epochs`` history rows, and a result (None: none)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(run_dir / records.MANIFEST, {
        "schema_version": records.SCHEMA_VERSION, "sweep": sweep, "arm_id": arm_id,
        "seed": seed, "arm": {}})
    rows = [{"epoch": e, "global_step": 10 * (e + 1), "train_loss": 1.0, "val_loss": 1.0,
             "lr": 1e-3, "wall_s": epoch_s * (e + 1)} for e in range(epochs)]
    if rows:
        records.write_history(run_dir / records.HISTORY, rows)
    if status is not None:
        fail = None if status == records.OK else records.failure(
            status, epoch=epochs, step=10 * epochs, wall_s=epoch_s * epochs)
        records.atomic_write_json(run_dir / records.RESULT, records.result_record(
            status=status, sweep=sweep, arm_id=arm_id, seed=seed, failure_info=fail,
            metrics={}, metrics_best=None, grad_norm={}, epochs_completed=epochs,
            global_step=10 * epochs, wall_s=epoch_s * epochs, params={},
            peak_memory_bytes=None))


class FakeJob:
    """A submitit job double: ``results()`` returns or raises its outcome. An outcome that is a
    result or a ``FailedJobError`` (the job's code raised) leaves a result file; an
    ``UncompletedJobError`` (killed) leaves none, and the queue says ``state`` (CANCELLED)."""

    def __init__(self, idx: int, outcome, folder: Path, state: str = "CANCELLED by 0"):
        from submitit.core.utils import FailedJobError, UncompletedJobError

        self.job_id = f"77_{idx}"
        self.outcome = outcome
        self.killed = (isinstance(outcome, UncompletedJobError)
                       and not isinstance(outcome, FailedJobError))
        self.state = state if self.killed else "COMPLETED"
        self.paths = types.SimpleNamespace(result_pickle=Path(folder) / f"{self.job_id}.pkl")
        if not self.killed:
            self.paths.result_pickle.write_bytes(b"")

    def results(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return [self.outcome]


class FakeQueue:
    """The scheduler's answer for fake jobs (``queue_reader`` of :class:`FakeExecutor`)."""

    result_wait_s = 0.0

    def __init__(self):
        self.jobs: list[FakeJob] = []

    def read(self, tracked):
        from ptychostab.launch.job_wait import Reading

        return Reading(ok=True, states={j.job_id: j.state for j in self.jobs})


class FakeExecutor:
    """A submitit executor double: records what was submitted; ``outcome(overrides)`` (a
    callable, or a dict keyed by the overrides tuple) gives each job's outcome. Its
    ``queue_reader`` answers for its jobs (the launcher takes it instead of squeue/sacct)."""

    def __init__(self, outcome):
        self.outcome = outcome if callable(outcome) else (lambda o: outcome[tuple(o)])
        self.submitted = []
        self.queue_reader = FakeQueue()
        self.folder = Path(tempfile.mkdtemp(prefix="fake-submitit-"))

    def map_array(self, fn, overrides, *rest):
        self.submitted = [list(o) for o in overrides]
        jobs = [FakeJob(i, self.outcome(o), self.folder) for i, o in enumerate(overrides)]
        self.queue_reader.jobs = jobs
        return jobs
