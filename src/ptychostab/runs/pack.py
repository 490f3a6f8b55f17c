"""Seeds packed per process (issue 14): K runs of one arm in one job, each as if trained alone.

``run_pack(members, pack_id=...)`` is :func:`~.job.run_job` for K (arm, seed) runs at once: one
process, one dataset load, one copy of the data on the device, and per member everything else
(its own ``Job`` and :class:`~.recorder.RunRecorder`: run folder, ``run.lock`` with the pack
id, ``run.log``, manifest with the ``pack`` block, sinks, checkpoints, history, result).

Engine (a), interleaved: each member's remaining training is a generator
(:func:`training_steps`: ``on_fit_start``, then per epoch ``on_train_epoch_start``, the steps of
:meth:`~ptychostab.training.module.PtychoModule.epoch_steps` one per ``next()``,
``on_train_epoch_end``), and the driver advances the members in turn, one step each, each
inside its own CUDA stream on a GPU (``torch.cuda.stream``; on a CPU the same round-robin runs
sequentially). No Lightning Trainer is built for a packed member; the process settings the
unpacked Trainer applies and that change numbers are applied once (:func:`fit_settings`:
deterministic algorithms and ``cudnn.benchmark=False`` on a CPU, as ``Trainer(deterministic=
device is cpu)``; precision 32 needs nothing; the module's ``zero_grad``; grad mode on). A
member computes exactly what it would alone: ``seed_everything(seed)`` right before its own
``build_model`` (the job's setup, unchanged), batch order from ``(seed, epoch)`` only, its own
clipper, optimizer, scheduler, monitors. No global random state is read while training (the
checkpoint's ``rng`` block holds the process's state at that member's save, as alone).

Endings, per member, through the job's own ``attempt`` (the mapping of :meth:`Job.run`): a
final ``result.json`` -> skipped (``SKIP``, its record returned); a NaN/divergence/collapse or
an exception in its step, its epoch end or its final evaluation ends that member at that point
with its record and the others go on; a stop signal (one :class:`~.signals.PreemptionGuard`
for the pack) makes every unfinished member save ``last.ckpt`` at its next step boundary and
record ``preempted``/``interrupted``, then the signal is chained as ``run_job`` does
(``SystemExit(128 + signum)`` / ``KeyboardInterrupt``). A rerun resumes each unfinished member
from its own ``last.ckpt`` (members may stand at different epochs: each generator starts where
its module stands). ``cfg.strict``: the first member failure is raised after every member has
ended. Every member's ``run.lock`` is taken before any folder is touched: a live holder of
one refuses the whole pack (:class:`~.lock.RunLocked`), nothing touched.

Without Hydra (subprocess tests)::

    python -m ptychostab.runs.pack --config A.yaml --config B.yaml --run-dir DA --run-dir DB \\
        [--arm-id X] [--pack-id P]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ptychostab.runs import records
from ptychostab.runs.build import TorchGlobals
from ptychostab.runs.job import Job
from ptychostab.runs.lock import RunLocked
from ptychostab.runs.recorder import RunRecorder
from ptychostab.runs.runlog import CURRENT_RUN
from ptychostab.runs.signals import PreemptionGuard
from ptychostab.runs.sinks import build_sinks

__all__ = ["Member", "fit_settings", "main", "run_pack", "training_steps"]

log = logging.getLogger(__name__)

#: config keys every member of a pack must share (the one dataset, placed once)
SHARED_KEYS = ("data", "paths.cache_dir", "trainer.accelerator", "trainer.max_data_on_device_gb")
STEP_DRIVER = "packed: one training_step per member in turn (runs/pack.py)"


@dataclass
class Member:
    cfg: DictConfig  # the plain resolved config of this seed (what cli.train passes run_job)
    run_dir: Path
    arm: dict = field(default_factory=dict)
    arm_id: str = "adhoc"
    overrides: list[str] = field(default_factory=list)


# --- the engine ----------------------------------------------------------------------------
def training_steps(module) -> Iterator[int]:
    """``module``'s remaining training as Lightning's ``fit`` runs it, one step per ``next()``
    (yields the batch index done, ``-1`` after an epoch end)."""
    module.zero_grad()  # Trainer._run_stage
    module.on_fit_start()
    while module.epoch < module.settings.max_epochs:
        module.on_train_epoch_start()
        yield from module.epoch_steps()
        module.on_train_epoch_end()
        yield -1


def fit_settings(device: torch.device) -> dict:
    """The process flags ``Trainer(deterministic=device is cpu, precision="32-true")`` sets
    (Lightning's ``_set_torch_flags``); restored by :class:`~.build.TorchGlobals`."""
    deterministic = device.type == "cpu"
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_grad_enabled(True)
    return {"precision": "32-true", "deterministic": deterministic}


def member_stream(device: torch.device):
    """A CUDA stream of its own for one member (None on a CPU), ordered after the work
    already queued (the shared data's placement)."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


# --- the bookkeeping -------------------------------------------------------------------------
class _Shared:
    """What the pack builds once for all members (the dataset, its device copies); a failure
    building it is every member's failure (each records it)."""

    def __init__(self):
        self._memo: dict[str, tuple] = {}

    def __call__(self, key: str, make: Callable):
        if key not in self._memo:
            try:
                self._memo[key] = (make(), None)
            except Exception as err:
                self._memo[key] = (None, err)
        value, err = self._memo[key]
        if err is not None:
            raise err
        return value


class _Member(Job):
    """One seed of a pack: the job with shared data and no Lightning Trainer."""

    def __init__(self, m: Member, guard: PreemptionGuard, rec: RunRecorder, shared: _Shared):
        retry = tuple(str(s) for s in (m.cfg.get("retry", None) or ()))
        super().__init__(m.cfg, m.run_dir, m.arm, m.arm_id, m.overrides, guard, recorder=rec,
                         retry=retry)
        self.shared = shared
        self.stream = None
        self.steps: Iterator[int] | None = None

    def load(self):
        return self.shared("data", super().load)

    def place(self, data, settings):
        return self.shared("placed", lambda: Job.place(self, data, settings))

    def driver(self, remaining: int) -> dict:
        self.module.step_driver = STEP_DRIVER
        return {"max_epochs_this_segment": remaining, "precision": "32-true",
                "deterministic": self.device.type == "cpu", "slurm_plugin": False,
                "trainer": None, "pack_id": self.rec.lock.info["pack_id"]}

    @contextlib.contextmanager
    def active(self, stream: bool = False):
        """This member's log lines go to its ``run.log`` only; its device work to its stream."""
        token = CURRENT_RUN.set(self.rec.run_id)
        try:
            use = torch.cuda.stream(self.stream) if stream and self.stream is not None else \
                contextlib.nullcontext()
            with use:
                yield
        finally:
            CURRENT_RUN.reset(token)

    def advance(self) -> dict | None:
        """One step (or epoch end) of training; the ending's record once there is one."""
        try:
            next(self.steps)
            return None
        except StopIteration:
            return self.complete()


def _check(members: list[Member]) -> None:
    dirs = [Path(m.run_dir).resolve() for m in members]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"run_pack: a run folder appears twice: {[str(d) for d in dirs]}")
    first = members[0].cfg
    for m in members[1:]:
        for key in SHARED_KEYS:
            a = OmegaConf.select(first, key, default=None)
            b = OmegaConf.select(m.cfg, key, default=None)
            a, b = (OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x
                    for x in (a, b))
            if a != b:
                raise ValueError(f"run_pack: the members share one dataset, but {key} differs "
                                 f"({m.run_dir}: {b!r}, {members[0].run_dir}: {a!r})")


def run_pack(members: list[Member], *, pack_id: str) -> list[dict]:
    """Train the members (same arm, different seeds) in ONE process; return their result
    records in member order. Same contract as runs.job.run_job per member: a member's final
    result -> skipped ("SKIP"), a failure is recorded and returned (never raised unless
    cfg.strict), a preemption/interrupt records every unfinished member then behaves like
    run_job (SystemExit(128+signum) / KeyboardInterrupt after recording).

    Raises
    ------
    ValueError
        Two members with one run folder, or members that do not share the data config.
    RunLocked
        A live process holds one member's folder (no folder touched).
    """
    if not members:
        return []
    _check(members)
    block = {"id": pack_id, "size": len(members),
             "members": [Path(m.run_dir).name for m in members]}
    recs = [RunRecorder(m.run_dir, config=OmegaConf.to_container(m.cfg, resolve=True),
                        arm=m.arm, arm_id=m.arm_id, overrides=m.overrides,
                        sinks=build_sinks(m.cfg, packed=True), pack_id=pack_id, pack=block)
            for m in members]
    results: list[dict | None] = [None] * len(members)
    todo = []
    for i, (m, rec) in enumerate(zip(members, recs, strict=True)):
        retry = tuple(str(s) for s in (m.cfg.get("retry", None) or ()))
        previous = rec.prior_result()
        status = previous.data.get("status") if previous.ok else None
        if records.is_final(status) and status not in retry:
            log.info("SKIP %s: already %s", rec.run_dir, status)
            results[i] = previous.data
            rec.end(None)  # never started: stops its writer thread, touches nothing
        else:
            todo.append(i)
    if not todo:
        return results

    shared = _Shared()
    with PreemptionGuard() as guard, TorchGlobals():
        jobs = {i: _Member(members[i], guard, recs[i], shared) for i in todo}
        try:
            for job in jobs.values():  # every lock before any file: RunLocked touches nothing
                job.rec.take_lock()
            log.info("PACK %s: %d of %d members to train (%s)", pack_id, len(jobs),
                     len(members), ", ".join(str(j.run_dir) for j in jobs.values()))
            _drive(list(jobs.values()))
        finally:
            for job in jobs.values():
                with job.active():
                    job.rec.end(job.record)
        for i, job in jobs.items():
            results[i] = job.record
        raised = next((j.raised for j in jobs.values() if j.raised is not None), None)
        if raised is not None:
            raise raised
        guard.chain()  # a signal that arrived: hand it on, as run_job does
    return results


def _drive(jobs: list[_Member]) -> None:
    """Set every member up, then advance the live ones in turn until each has its ending."""
    live = []
    for job in jobs:
        with job.active():
            job.record = job.attempt(job.begin)
        if job.record is None:
            live.append(job)
        else:
            _end(job)
    if not live:
        return
    device = live[0].device
    fit_settings(device)
    for job in live:
        job.stream = member_stream(device)
        job.steps = training_steps(job.module)
    while live:
        for job in list(live):
            with job.active(stream=True):
                record = job.attempt(job.advance)
            if record is not None:
                job.record = record
                live.remove(job)
                _end(job)


def _end(job: _Member) -> None:
    """A member has its ending: its recorder ends now (lock released, trackers closed)."""
    with job.active(stream=True):
        if job.stream is not None:
            job.stream.synchronize()
        job.rec.end(job.record)


# --- without Hydra -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True,
                        help="YAML with one member's composed config (repeat, in order)")
    parser.add_argument("--run-dir", action="append", required=True,
                        help="that member's run folder (repeat, in the same order)")
    parser.add_argument("--arm-id", default="adhoc")
    parser.add_argument("--pack-id", default=None, help="default: a random id")
    args = parser.parse_args(argv)
    if len(args.config) != len(args.run_dir):
        parser.error("one --run-dir per --config")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    members = [Member(OmegaConf.load(c), Path(d), {}, args.arm_id, [])
               for c, d in zip(args.config, args.run_dir, strict=True)]
    try:
        results = run_pack(members, pack_id=args.pack_id or uuid.uuid4().hex[:12])
    except RunLocked as err:
        print(f"refused: {err}", file=sys.stderr)
        return 75
    except KeyboardInterrupt:
        print("status: interrupted (KeyboardInterrupt after recording)")
        return 128 + signal.SIGINT
    for m, r in zip(members, results, strict=True):
        print(f"{m.run_dir}: status: {(r or {}).get('status')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
