"""One training job end to end: build, train, classify the ending; the recorder writes.

``run_job(cfg, run_dir=..., arm=..., arm_id=..., overrides=...)`` trains one (arm, seed) run.
Every file of ``run_dir`` is written by its :class:`~.recorder.RunRecorder` (see there and
docs/contracts.md); this module builds the objects, drives Lightning and decides the status.

A rerun of the same job: a final ``result.json`` -> "SKIP <run_dir>: already <status>",
nothing touched, unless its status is in ``cfg.retry`` (``retry=[oom,exception]``: the old
records are set aside, ``<file>.retry-<n>``, and the run starts from scratch); another live
process holds ``run.lock`` -> :class:`~.lock.RunLocked`, nothing touched; a readable
``last.ckpt`` -> resume (position, optimizer, scheduler, monitors, history, RNG) and train the
remaining epochs (none when it was saved after the last one); a damaged one -> set aside and
the run restarts from its beginning in place; else a fresh start.

Endings (:mod:`.faults` classifies errors): the instability kinds, ``oom`` and ``exception``
(a bug in ptychostab) are final; ``infra`` (cause disk, device, data, ...), ``preempted``
(SIGTERM/SIGUSR2) and ``interrupted`` (SIGINT) are not. Every ending is recorded and
``run_job`` returns normally (exit 0 from the CLI); a stop signal is then chained, once the
lock is released (:mod:`.signals`: submitit requeues; Ctrl-C raises ``KeyboardInterrupt``, so
an in-process sweep stops). ``cfg.strict=true`` re-raises a failure after recording it.

Without Hydra (subprocess tests, debugging)::

    python -m ptychostab.runs.job --config CFG.yaml --run-dir DIR [--arm-id X]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from ptychostab.runs import records
from ptychostab.runs.build import (
    ReinstallSignals,
    TorchGlobals,
    build_model,
    configure_device,
    describe_model,
    load_data,
    quiet_lightning,
    resolve_device,
)
from ptychostab.runs.checkpoint import set_rng_state
from ptychostab.runs.evaluation import evaluate_run, grad_norm_summary, loss_metrics, peak_memory
from ptychostab.runs.faults import InfraFault, classify, describe_os_error
from ptychostab.runs.lock import RunLocked
from ptychostab.runs.recorder import RunRecorder, now
from ptychostab.runs.signals import PreemptionGuard, signal_name, status_for_signal
from ptychostab.runs.sink import Sink
from ptychostab.runs.sinks import build_sinks
from ptychostab.training.batches import place
from ptychostab.training.clipping import GradientClipper
from ptychostab.training.module import Preempted, PtychoModule
from ptychostab.training.monitors import FailureSettings, TrainingFailure
from ptychostab.training.settings import TrainerSettings

__all__ = ["RECON", "build_model", "load_data", "main", "resolve_device", "run_job"]

log = logging.getLogger(__name__)

RECON = records.RECON


def _quietly(what: str, fn, *args) -> None:
    """A write on the way to recording an ending: its failure is logged, not raised."""
    try:
        fn(*args)
    except (InfraFault, OSError) as err:
        log.error("%s failed: %s", what, err)


# --- the job ------------------------------------------------------------------------------------
class Job:
    """Builds and trains one run; every file goes through ``self.rec``."""

    def __init__(self, cfg: DictConfig, run_dir, arm: dict, arm_id: str, overrides: list[str],
                 guard: PreemptionGuard, recorder: RunRecorder | None = None,
                 retry: tuple[str, ...] = ()):
        self.cfg, self.guard, self.retry = cfg, guard, tuple(retry)
        self.rec = recorder or RunRecorder(
            run_dir, config=OmegaConf.to_container(cfg, resolve=True), arm=arm, arm_id=arm_id,
            overrides=overrides, sinks=build_sinks(cfg))
        self.run_dir, self.seed = self.rec.run_dir, self.rec.seed
        self.device = torch.device("cpu")
        self.module: PtychoModule | None = None
        self.data = None
        self.trainer: L.Trainer | None = None
        self.record: dict | None = None
        self.raised: BaseException | None = None

    @property
    def effective(self) -> dict | None:
        return self.rec.effective

    @property
    def writer(self):
        return self.rec.writer

    def drain_writes(self, strict: bool = True) -> None:
        self.rec.drain(strict)

    # -- phases
    def run(self) -> dict:
        """Start the recorder, set up, train, finish; every ending recorded and returned."""
        return self.attempt(self._whole)

    def _whole(self) -> dict:
        self.begin()
        self.train()
        return self.complete()

    def begin(self) -> None:
        self.rec.start(retry=self.retry)
        self.setup()

    def complete(self) -> dict:
        """Training ended: the final record (``cfg.strict``: a failure is kept to raise)."""
        record = self.finish()
        if self.cfg.get("strict", False) and record["status"] != records.OK:
            f = record["failure"]
            self.raised = TrainingFailure(f["kind"], epoch=f["epoch"], step=f["step"],
                                          message=f["message"], wall_s=f["wall_s"])
        return record

    def attempt(self, phase, *args):
        """``phase(*args)``; an ending it raises is recorded and its record returned (a pack
        drives its members' phases one by one through here)."""
        strict = bool(self.cfg.get("strict", False))
        try:
            return phase(*args)
        except RunLocked:
            raise
        except Preempted as p:
            return self.record_stopped(p)
        except TrainingFailure as f:
            self.raised = f if strict else None
            return self.record_failure(f)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            self.raised = err if strict else None
            return self.record_error(err)

    def load(self):
        """The dataset (hook: a pack loads it once for its members)."""
        try:
            return load_data(self.cfg)
        except OSError as err:
            raise InfraFault("data", describe_os_error(err, "loading the dataset from")) from err

    def place(self, data, settings: TrainerSettings) -> tuple:
        """``(train, train_on, val, val_on, probe)`` on the device (hook: a pack shares them)."""
        budget = settings.max_data_on_device_gb * 1e9
        train, train_on = place(data.train_amp, self.device, budget)
        used = train.numel() * train.element_size() if train_on else 0
        val, val_on = place(data.test_amp, self.device, budget - used)
        probe = torch.as_tensor(np.asarray(data.probe)).to(self.device)
        return train, train_on, val, val_on, probe

    def setup(self) -> None:
        cfg, rec = self.cfg, self.rec
        settings = TrainerSettings.from_config(cfg.trainer)
        failure = FailureSettings.from_config(cfg.failure)
        clipper = GradientClipper.from_config(cfg.clip)
        self.device = resolve_device(settings.accelerator)
        rec.write_manifest(device=self.device)  # who/what/where, even if building fails below

        tf32 = configure_device(self.device, settings.tf32)
        self.data = self.load()
        L.seed_everything(self.seed, workers=False, verbose=False)  # seed 0 is a seed
        generator = build_model(cfg).to(self.device)
        try:
            info = describe_model(generator, settings.batch_size)
        except Exception as err:  # description is for the records; never fail a run on it
            log.warning("describe(model) failed: %s", err)
            info = {"describe_error": repr(err)}

        train, train_on, val, val_on, probe = self.place(self.data, settings)
        self.module = PtychoModule(
            generator, probe, train, val, settings=settings, clipper=clipper, failure=failure,
            seed=self.seed, device=self.device, clock=rec.clock,
            on_epoch_end=rec.epoch_end, stop_requested=self.guard.pending,
            generator_info=info, on_sync=rec.sync if rec.sinks else None)

        if rec.checkpoint is not None:
            self.module.load_training_state(rec.checkpoint["training"])
            set_rng_state(rec.checkpoint["rng"])
            rec.resumed(self.module)

        rec.ready(self.module)
        lightning = self.driver(settings.max_epochs - self.module.epoch)
        rec.write_manifest(effective={
            **self.module.effective_settings(),
            "max_epochs": settings.max_epochs,
            "lightning": lightning,
            "tf32": tf32,
            "seed": self.seed,
            "data_on_device": {"train": train_on, "val": val_on,
                               "budget_gb": settings.max_data_on_device_gb},
        })

    def driver(self, remaining: int) -> dict:
        """Build what drives the epochs (here a Lightning Trainer; hook: a pack drives its
        members itself); returns the manifest's ``effective.lightning`` block."""
        self.trainer = self._trainer(remaining)
        return {"max_epochs_this_segment": self.trainer.max_epochs,
                "precision": str(self.trainer.precision),
                "deterministic": self.device.type == "cpu",
                "slurm_plugin": any(isinstance(p, SLURMEnvironment) for p in self._plugins)}

    def _trainer(self, max_epochs: int) -> L.Trainer:
        # submitit owns requeueing: Lightning must not install its own SLURM requeue handler.
        with quiet_lightning():
            self._plugins = ([SLURMEnvironment(auto_requeue=False)]
                             if SLURMEnvironment.detect() else [])
            return self._new_trainer(max_epochs)

    def _new_trainer(self, max_epochs: int) -> L.Trainer:
        return L.Trainer(
            accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1,
            max_epochs=max(1, max_epochs), precision="32-true",
            logger=False,  # trackers are the recorder's sinks (runs/sinks.py), not Lightning's
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, deterministic=self.device.type == "cpu",
            default_root_dir=self.run_dir, plugins=self._plugins,
            callbacks=[ReinstallSignals(self.guard)])

    def train(self) -> None:
        """Fit the remaining epochs; none when ``last.ckpt`` was saved after the last one
        (Lightning's ``max_epochs`` is at least 1, so ``fit`` must not be called then)."""
        if self.module.epoch < self.module.settings.max_epochs:
            with quiet_lightning():
                self.trainer.fit(self.module)

    # -- outcomes
    def finish(self) -> dict:
        """Training completed: evaluate final and best weights, check for collapse."""
        self.rec.drain()  # best.ckpt is read back below
        metrics, metrics_best = self.evaluate()
        status, failure = records.OK, None
        bound = self.module.failure.collapse_ssim
        ssim = metrics.get("amp_ssim")
        if bound is not None and (ssim is None or not ssim >= bound):
            failure = records.failure(
                "collapsed", epoch=self.module.epoch - 1, step=self.module.global_step_count,
                wall_s=self.rec.clock(),
                message=f"final amplitude SSIM {ssim} below failure.collapse_ssim={bound}")
            status = "collapsed"
        return self.result(status, failure, metrics, metrics_best)

    def evaluate(self) -> tuple[dict, dict | None]:
        metrics, metrics_best, recon = evaluate_run(
            self.module, self.data, self.device, self.cfg.trainer.loss,
            self.rec.path(records.BEST_CKPT))
        if recon is not None:
            self.rec.write_bytes(RECON, recon)
        return metrics, metrics_best

    def result(self, status: str, failure: dict | None, metrics: dict,
               metrics_best: dict | None) -> dict:
        m = self.module
        eff = (self.rec.effective or {}).get("generator", {})
        peak, peak_kind = peak_memory(self.device)
        record = records.result_record(
            status=status, sweep=self.rec.sweep, arm_id=self.rec.arm_id, seed=self.seed,
            failure_info=failure, metrics=metrics, metrics_best=metrics_best,
            grad_norm=grad_norm_summary(m.history if m else []),
            epochs_completed=m.epoch if m else 0,
            global_step=m.global_step_count if m else 0, wall_s=round(self.rec.clock(), 3),
            params={"real": eff.get("params_real"), "numel": eff.get("params_numel")},
            peak_memory_bytes=peak, peak_memory_kind=peak_kind, config_hash=self.rec.config_hash,
            arm=self.rec.arm, device=str(self.device), end_time=now())
        try:
            self.record = self.rec.write_result(record)
        except (InfraFault, OSError) as err:  # the disk took the ending too: it stays in the log
            log.error("could not record %s: %s", status, err)
            self.record = record
        return self.record

    def _failure(self, kind: str, message: str, cause: str | None = None, *, epoch=None,
                 step=None, wall_s=None) -> dict:
        m = self.module
        return records.failure(
            kind, epoch=epoch if epoch is not None else (m.epoch if m else None),
            step=step if step is not None else (m.global_step_count if m else None),
            wall_s=wall_s if wall_s is not None else self.rec.clock(), message=message,
            cause=cause)

    def record_failure(self, f: TrainingFailure) -> dict:
        self.rec.drain(strict=False)
        if self.module is not None:
            _quietly("writing history.csv", self.rec.write_history, self.module.history)
        failure = self._failure(f.kind, f.message, epoch=f.epoch, step=f.step, wall_s=f.wall_s)
        try:
            metrics, metrics_best = self.evaluate()
        except Exception as err:  # evaluation of a failed run must not hide the failure
            log.warning("evaluation after %s failed: %r", f.kind, err)
            metrics, metrics_best = loss_metrics(self.module, self.cfg.trainer.loss), None
        return self.result(f.kind, failure, metrics, metrics_best)

    def record_stopped(self, p: Preempted) -> dict:
        """A stop signal at a step boundary: ``last.ckpt`` now, then ``preempted`` (SIGTERM,
        SIGUSR2) or ``interrupted`` (SIGINT)."""
        status, m = status_for_signal(p.signum), self.module
        self.rec.drain(strict=False)  # an older queued last.ckpt must land first
        try:
            self.rec.save_last(m, reason=status)
            self.rec.write_history(m.history)
        except Exception as err:  # the disk (infra) or our own bug (exception): recorded
            return self.record_error(err)
        failure = self._failure(
            status, f"{signal_name(p.signum)}: saved last.ckpt at epoch {m.epoch}, batch "
                    f"{m.step_in_epoch}; a rerun resumes from it")
        return self.result(status, failure, loss_metrics(m, self.cfg.trainer.loss), None)

    def record_error(self, err: BaseException) -> dict:
        """An exception: ``infra`` (with its cause), ``oom`` or ``exception`` (our bug)."""
        tb = self.rec.write_traceback(err)
        status, cause, message = classify(err, tb)
        log.error("%s: %s", status if cause is None else f"{status} ({cause})", message)
        self.rec.drain(strict=False)
        if status != "infra" and self.module is not None:  # infra: disk stays as last.ckpt says
            _quietly("writing history.csv", self.rec.write_history, self.module.history)
        if status == "oom" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.result(status, self._failure(status, message, cause),
                           loss_metrics(self.module, self.cfg.trainer.loss), None)


def run_job(cfg: DictConfig, *, run_dir, arm: dict, arm_id: str, overrides: list[str],
            sinks: list[Sink] | None = None) -> dict:
    """Train one (arm, seed) job in ``run_dir`` and return its ``result.json`` record.

    Parameters
    ----------
    cfg : DictConfig
        The composed config (``cfg.retry``: final statuses to train again, default none).
    run_dir : path
    arm : dict
    arm_id : str
    overrides : list of str
    sinks : list of Sink, optional
        The recorder's further per-run sinks (default :func:`.sinks.build_sinks` of ``cfg``).

    Raises
    ------
    RunLocked
        Another live process runs this folder (nothing touched).
    KeyboardInterrupt, SystemExit
        After a stop signal, once recorded (:mod:`.signals`); a failed run only with
        ``cfg.strict``.
    """
    rec = RunRecorder(run_dir, config=OmegaConf.to_container(cfg, resolve=True), arm=arm,
                      arm_id=arm_id, overrides=overrides,
                      sinks=build_sinks(cfg) if sinks is None else sinks)
    retry = tuple(str(s) for s in (cfg.get("retry", None) or ()))
    previous = rec.prior_result()
    status = previous.data.get("status") if previous.ok else None
    if records.is_final(status) and status not in retry:
        log.info("SKIP %s: already %s", rec.run_dir, status)
        return previous.data

    with PreemptionGuard() as guard, TorchGlobals():
        job = Job(cfg, run_dir, arm, arm_id, overrides, guard, recorder=rec, retry=retry)
        try:
            record = job.run()
        finally:
            rec.end(job.record)
        if job.raised is not None:
            raise job.raised
        guard.chain()  # a signal that arrived: hand it on (submitit requeues, Ctrl-C raises)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML with the composed config")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--arm-id", default="adhoc")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = OmegaConf.load(args.config)
    try:
        record = run_job(cfg, run_dir=Path(args.run_dir), arm={}, arm_id=args.arm_id,
                         overrides=[])
    except RunLocked as err:
        print(f"refused: {err}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again once the holder is gone
    except KeyboardInterrupt:
        print("status: interrupted (KeyboardInterrupt after recording)")
        return 128 + signal.SIGINT
    print(f"status: {record['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
