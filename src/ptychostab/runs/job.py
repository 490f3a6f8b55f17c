"""One training job end to end: records, checkpoints, resume, failures, signals.

``run_job(cfg, run_dir=..., arm=..., arm_id=..., overrides=...)`` owns ``run_dir`` and writes
there (records.py is the contract):

- ``manifest.json`` at start (rewritten once the objects are built, with ``effective``: the
  settings read back from them), ``history.csv`` after every epoch, ``result.json`` at the end;
- ``last.ckpt`` after every epoch and at preemption, ``best.ckpt`` by validation loss;
- ``recon.npz`` (``truth`` and ``pred``: stitched complex test image 0, final weights, ``pred``
  with the amplitude scale and global phase matched to the truth for display; ``pred_raw``
  as the network gave it);
- ``traceback.txt`` when the job raised.

A rerun of the same job: a final ``result.json`` -> "SKIP <run_dir>: already <status>", nothing
trained, the record returned; else a ``last.ckpt`` -> resume (position, optimizer, scheduler,
monitors, history, RNG) and finish the remaining epochs; else a fresh start.

A failed run (nonfinite, diverged, collapsed, exception, oom) is recorded and ``run_job``
returns normally (exit code 0 from the CLI); ``cfg.strict=true`` re-raises after recording.

Also a plain entry point without Hydra, for subprocess tests and debugging::

    python -m ptychostab.runs.job --config CFG.yaml --run-dir DIR [--arm-id X]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import logging
import math
import resource
import sys
import time
import traceback
import uuid
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from ptychostab.evaluation.metrics import match_gauge
from ptychostab.runs import records
from ptychostab.runs.checkpoint import (
    FORMAT,
    CheckpointWriter,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
    snapshot,
)
from ptychostab.runs.environment import (
    config_hash,
    device_info,
    git_info,
    host_info,
    package_versions,
    slurm_ids,
)
from ptychostab.runs.signals import PreemptionGuard
from ptychostab.training.batches import place
from ptychostab.training.clipping import GradientClipper
from ptychostab.training.module import Preempted, PtychoModule
from ptychostab.training.monitors import FailureSettings, TrainingFailure
from ptychostab.training.settings import TrainerSettings

__all__ = ["RECON", "build_model", "load_data", "main", "resolve_device", "run_job"]

log = logging.getLogger(__name__)

RECON = "recon.npz"
_EVAL_KEYS = ("amp_ssim", "phase_ssim", "amp_mae", "phase_mae", "amp_psnr", "phase_psnr")


# --- building blocks (module-level so tests can substitute doubles) ----------------------------
def resolve_device(accelerator: str) -> torch.device:
    if accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.accelerator=cuda but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """``build_generator(arch.name, in_channels=gridsize**2, N=data.N, **rest of arch)``."""
    from ptychostab.models import build_generator

    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    name = arch.pop("name")
    return build_generator(name, in_channels=int(cfg.data.gridsize) ** 2, N=int(cfg.data.N),
                           **arch)


def describe_model(model: torch.nn.Module, batch_size: int) -> dict:
    from ptychostab.models import describe

    info = dict(describe(model, batch_size=batch_size))
    info["config"] = dict(getattr(model, "config", {}) or {})
    return info


def load_data(cfg: DictConfig):
    from ptychostab.data.simulate import load_or_build

    return load_or_build(OmegaConf.to_container(cfg.data, resolve=True),
                         cache_dir=cfg.paths.cache_dir)


def evaluate_predictions(pred: np.ndarray, data) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of test image 0 and the stitched (pred, truth) images."""
    from ptychostab.evaluation.metrics import phase_is_constant
    from ptychostab.evaluation.reconstruction import (
        evaluate_patches,
        stitch_test_image,
        truth_image,
    )

    metrics = dict(evaluate_patches(pred, data, image=0))
    truth = truth_image(data, 0)
    metrics["phase_truth_constant"] = bool(phase_is_constant(truth))
    return metrics, stitch_test_image(pred, data, 0), truth


def _is_oom(err: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(err, oom_type) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _ReinstallSignals(Callback):
    """Lightning replaces SIGTERM's handler at fit start; put the job's back."""

    def __init__(self, guard: PreemptionGuard):
        self.guard = guard

    def on_train_start(self, trainer, pl_module) -> None:
        self.guard.reinstall()


class _TorchGlobals:
    """Save and restore the process-wide flags a job changes (an in-process sweep runs many)."""

    def __enter__(self):
        self.saved = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled(),
                      torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                      torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        return self

    def __exit__(self, *exc):
        det, warn, cdet, bench, tf_mm, tf_cudnn = self.saved
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cdet, bench
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf_mm, tf_cudnn


# --- the job ------------------------------------------------------------------------------------
class _Job:
    def __init__(self, cfg: DictConfig, run_dir: Path, arm: dict, arm_id: str,
                 overrides: list[str], guard: PreemptionGuard):
        self.cfg, self.run_dir, self.arm, self.arm_id = cfg, run_dir, dict(arm), arm_id
        self.overrides, self.guard = list(overrides), guard
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.hash = config_hash(self.resolved)
        self.seed = int(cfg.seed)
        self.t0 = time.monotonic()
        self.wall_offset = 0.0
        self.device = torch.device("cpu")
        self.module: PtychoModule | None = None
        self.data = None
        self.effective: dict | None = None
        self.writer = CheckpointWriter()  # last/best.ckpt and history.csv, off the step path
        self.segment: dict = {"id": uuid.uuid4().hex[:12], "start_time": _now(),
                              "resumed_from": None, "slurm": slurm_ids(),
                              "host": host_info()["hostname"]}

    # -- helpers
    def clock(self) -> float:
        return self.wall_offset + time.monotonic() - self.t0

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def write_manifest(self) -> None:
        old = records.read_json(self.path(records.MANIFEST))
        segments = list(old.data.get("segments", [])) if old.ok else []
        if not segments or segments[-1].get("id") != self.segment["id"]:
            segments.append(self.segment)
        else:
            segments[-1] = self.segment
        manifest = {
            "schema_version": records.SCHEMA_VERSION,
            "sweep": self.cfg.get("sweep"),
            "arm": self.arm,
            "arm_id": self.arm_id,
            "seed": self.seed,
            "overrides": self.overrides,
            "config": self.resolved,
            "config_hash": self.hash,
            "git": git_info(),
            "versions": package_versions(),
            "host": host_info(),
            "device": device_info(self.device),
            "slurm": slurm_ids(),
            "start_time": segments[0]["start_time"],
            "effective": self.effective,
            "segments": segments,
        }
        records.atomic_write_json(self.path(records.MANIFEST), manifest)

    # -- phases
    def setup(self) -> None:
        cfg = self.cfg
        settings = TrainerSettings.from_config(cfg.trainer)
        failure = FailureSettings.from_config(cfg.failure)
        clipper = GradientClipper.from_config(cfg.clip)
        self.device = resolve_device(settings.accelerator)
        self.write_manifest()  # who/what/where, even if building fails below

        ckpt = None
        if self.path(records.LAST_CKPT).exists():
            ckpt = load_checkpoint(self.path(records.LAST_CKPT))
            if ckpt.get("config_hash") != self.hash:
                log.warning("resuming %s with a different config (hash %s -> %s)",
                            self.run_dir, ckpt.get("config_hash"), self.hash)

        tf32 = {"requested": settings.tf32, "applies": self.device.type == "cuda"}
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = settings.tf32
            torch.backends.cudnn.allow_tf32 = settings.tf32
            tf32.update(matmul=torch.backends.cuda.matmul.allow_tf32,
                        cudnn=torch.backends.cudnn.allow_tf32,
                        float32_matmul_precision=torch.get_float32_matmul_precision())
            torch.cuda.reset_peak_memory_stats(self.device)

        self.data = load_data(cfg)
        L.seed_everything(self.seed, workers=False, verbose=False)  # seed 0 is a seed
        generator = build_model(cfg).to(self.device)
        try:
            info = describe_model(generator, settings.batch_size)
        except Exception as err:  # description is for the records; never fail a run on it
            log.warning("describe(model) failed: %s", err)
            info = {"describe_error": repr(err)}

        budget = settings.max_data_on_device_gb * 1e9
        train, train_on = place(self.data.train_amp, self.device, budget)
        used = train.numel() * train.element_size() if train_on else 0
        val, val_on = place(self.data.test_amp, self.device, budget - used)
        probe = torch.as_tensor(np.asarray(self.data.probe)).to(self.device)
        self.module = PtychoModule(
            generator, probe, train, val, settings=settings, clipper=clipper, failure=failure,
            seed=self.seed, device=self.device, clock=self.clock,
            on_epoch_end=self.on_epoch_end, stop_requested=self.guard.pending,
            generator_info=info)

        if ckpt is not None:
            self.module.load_training_state(ckpt["training"])
            set_rng_state(ckpt["rng"])
            self.wall_offset = float(ckpt["wall_s"])
            self.segment["resumed_from"] = {"epoch": self.module.epoch,
                                            "step_in_epoch": self.module.step_in_epoch,
                                            "global_step": self.module.global_step_count,
                                            "reason": ckpt.get("reason")}
            records.write_history(self.path(records.HISTORY), self.module.history)
            log.info("RESUME %s at epoch %d step %d", self.run_dir, self.module.epoch,
                     self.module.global_step_count)

        self.trainer = self._trainer(settings.max_epochs - self.module.epoch)
        self.effective = {
            **self.module.effective_settings(),
            "max_epochs": settings.max_epochs,
            "lightning": {"max_epochs_this_segment": self.trainer.max_epochs,
                          "precision": str(self.trainer.precision),
                          "deterministic": self.device.type == "cpu",
                          "slurm_plugin": any(isinstance(p, SLURMEnvironment)
                                              for p in self._plugins)},
            "tf32": tf32,
            "seed": self.seed,
            "data_on_device": {"train": train_on, "val": val_on,
                               "budget_gb": settings.max_data_on_device_gb},
        }
        self.write_manifest()

    def _trainer(self, max_epochs: int) -> L.Trainer:
        # submitit owns requeueing: Lightning must not install its own SLURM requeue handler.
        self._plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
        return L.Trainer(
            accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1,
            max_epochs=max(1, max_epochs), precision="32-true",
            logger=CSVLogger(self.run_dir, name="lightning_logs", flush_logs_every_n_steps=1),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, deterministic=self.device.type == "cpu",
            default_root_dir=self.run_dir, plugins=self._plugins,
            callbacks=[_ReinstallSignals(self.guard)])

    def on_epoch_end(self, module: PtychoModule, row: dict, is_best: bool) -> None:
        """After every epoch: last.ckpt first (the resume point), best.ckpt, history.csv,
        snapshotted now and written in that order by the background writer (the previous
        epoch's writes are waited for first: at most one epoch of writes in flight)."""
        self.writer.wait()
        last = self.save_last(reason="epoch_end", wait=False)
        if is_best:  # the same CPU copy of the weights (read-only from here on)
            best = {"format": FORMAT, "generator": last["training"]["generator"],
                    "epoch": row["epoch"], "val_loss": row["val_loss"]}
            self.writer.submit(atomic_torch_save, best, self.path(records.BEST_CKPT))
        self.writer.submit(records.write_history, self.path(records.HISTORY),
                           snapshot(module.history))

    def save_last(self, reason: str, wait: bool = True) -> dict:
        """Snapshot the training state now and write ``last.ckpt`` (in the background unless
        ``wait``); returns the snapshot."""
        state = snapshot({"format": FORMAT, "reason": reason,
                          "training": self.module.training_state(), "rng": rng_state(),
                          "wall_s": self.clock(), "config_hash": self.hash})
        self.writer.submit(atomic_torch_save, state, self.path(records.LAST_CKPT))
        if wait:
            self.writer.wait()
        return state

    def drain_writes(self, strict: bool = True) -> None:
        """Wait for the queued checkpoint/history writes; ``strict=False`` logs an error
        instead of raising (a failure being recorded must not be hidden by it)."""
        try:
            self.writer.wait()
        except Exception as err:
            if strict:
                raise
            log.warning("writing checkpoints/history failed: %r", err)

    def train(self) -> None:
        if self.module.epoch < self.module.settings.max_epochs:
            self.trainer.fit(self.module)

    # -- outcomes
    def finish(self) -> dict:
        """Training completed: evaluate final and best weights, check for collapse."""
        self.drain_writes()  # best.ckpt is read back below
        metrics, metrics_best = self.evaluate_all(save_recon=True)
        status, failure = records.OK, None
        bound = self.module.failure.collapse_ssim
        ssim = metrics.get("amp_ssim")
        if bound is not None and (ssim is None or not ssim >= bound):
            failure = records.failure(
                "collapsed", epoch=self.module.epoch - 1, step=self.module.global_step_count,
                wall_s=self.clock(),
                message=f"final amplitude SSIM {ssim} below failure.collapse_ssim={bound}")
            status = "collapsed"
        return self.write_result(status, failure, metrics, metrics_best)

    def evaluate_all(self, save_recon: bool) -> tuple[dict, dict | None]:
        metrics = self.loss_metrics()
        metrics_best = None
        gen = self.module.generator
        if all(bool(torch.isfinite(p).all()) for p in gen.parameters()):
            scores, pred_img, truth_img = evaluate_predictions(self.predict_test(), self.data)
            metrics.update(scores)
            if save_recon:
                buf = io.BytesIO()
                np.savez(buf, pred=match_gauge(pred_img, truth_img), pred_raw=pred_img,
                         truth=truth_img)
                records.atomic_write_bytes(self.path(RECON), buf.getvalue())
        else:
            metrics.update({k: None for k in _EVAL_KEYS}, nonfinite_weights=True)
        if self.path(records.BEST_CKPT).exists():
            best = torch.load(self.path(records.BEST_CKPT), map_location=self.device,
                              weights_only=True)
            gen.load_state_dict(best["generator"])  # final weights are no longer needed
            metrics_best, _, _ = evaluate_predictions(self.predict_test(), self.data)
            metrics_best.update(val_loss=best["val_loss"], epoch=best["epoch"])
        return metrics, metrics_best

    @torch.no_grad()
    def predict_test(self) -> np.ndarray:
        m = self.module
        m.generator.eval()
        out = [m.forward_fn(x.to(self.device)).cpu()
               for x in m.val_data.split(m.settings.eval_batch_size)]
        return torch.cat(out).numpy()

    def loss_metrics(self) -> dict:
        m = self.module
        rows = [r for r in (m.history if m else []) if r.get("val_loss") is not None]
        val_name = m.loss_names["val"] if m else f"{self.cfg.trainer.loss}_val_loss"
        best = m.best if m else {"val_loss": math.inf, "epoch": None}
        return {
            "val_loss_name": val_name,
            "best_val_loss": best["val_loss"] if math.isfinite(best["val_loss"]) else None,
            "best_epoch": best["epoch"],
            "final_val_loss": rows[-1]["val_loss"] if rows else None,
            "final_train_loss": rows[-1]["train_loss"] if rows else None,
            "amp_rel_std": rows[-1].get("amp_rel_std") if rows else None,
        }

    def grad_norm_summary(self) -> dict:
        rows = self.module.history if self.module else []
        out = {}
        for key in ("grad_norm_pre_median", "grad_norm_pre_max", "grad_norm_post_median",
                    "grad_norm_post_max", "clip_fraction"):
            v = np.array([r.get(key, math.nan) for r in rows], dtype=float)
            finite = v[np.isfinite(v)]
            agg = np.max if key.endswith("max") else np.median
            out[key] = float(agg(finite)) if finite.size else None
            out[f"final_{key}"] = float(v[-1]) if v.size else None
        return out

    def peak_memory(self) -> tuple[int, str]:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host_max_rss"

    def write_result(self, status: str, failure: dict | None, metrics: dict,
                     metrics_best: dict | None) -> dict:
        m = self.module
        eff = (self.effective or {}).get("generator", {})
        peak, peak_kind = self.peak_memory()
        record = records.result_record(
            status=status, sweep=self.cfg.get("sweep"), arm_id=self.arm_id, seed=self.seed,
            failure_info=failure, metrics=metrics, metrics_best=metrics_best,
            grad_norm=self.grad_norm_summary(),
            epochs_completed=m.epoch if m else 0,
            global_step=m.global_step_count if m else 0, wall_s=round(self.clock(), 3),
            params={"real": eff.get("params_real"), "numel": eff.get("params_numel")},
            peak_memory_bytes=peak, peak_memory_kind=peak_kind, config_hash=self.hash,
            arm=self.arm, device=str(self.device), end_time=_now())
        records.atomic_write_json(self.path(records.RESULT), record)
        log.info("%s %s: %s", "DONE" if status == records.OK else "FAILED"
                 if records.is_final(status) else "STOPPED", self.run_dir, status)
        return record

    def record_failure(self, f: TrainingFailure) -> dict:
        self.drain_writes(strict=False)
        if self.module is not None:
            records.write_history(self.path(records.HISTORY), self.module.history)
        failure = records.failure(f.kind, epoch=f.epoch, step=f.step,
                                  wall_s=f.wall_s if f.wall_s is not None else self.clock(),
                                  message=f.message)
        try:
            metrics, metrics_best = self.evaluate_all(save_recon=True)
        except Exception as err:  # evaluation of a failed run must not hide the failure
            log.warning("evaluation after %s failed: %r", f.kind, err)
            metrics, metrics_best = self.loss_metrics(), None
        return self.write_result(f.kind, failure, metrics, metrics_best)

    def record_preempted(self, p: Preempted) -> dict:
        self.drain_writes(strict=False)  # an older queued last.ckpt must land first
        self.save_last(reason="preempted")
        records.write_history(self.path(records.HISTORY), self.module.history)
        m = self.module
        name = _signal_name(p.signum)
        failure = records.failure(
            "preempted", epoch=m.epoch, step=m.global_step_count, wall_s=self.clock(),
            message=f"{name}: saved last.ckpt at epoch {m.epoch}, batch {m.step_in_epoch}; "
                    "a rerun resumes from it")
        return self.write_result("preempted", failure, self.loss_metrics(), None)

    def record_exception(self, err: BaseException) -> dict:
        kind = "oom" if _is_oom(err) else "exception"
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        records.atomic_write_text(self.path(records.TRACEBACK), text)
        self.drain_writes(strict=False)
        if self.module is not None:
            records.write_history(self.path(records.HISTORY), self.module.history)
        m = self.module
        failure = records.failure(
            kind, epoch=m.epoch if m else None, step=m.global_step_count if m else None,
            wall_s=self.clock(), message=f"{type(err).__name__}: {err}"[:2000])
        if kind == "oom" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.write_result(kind, failure, self.loss_metrics(), None)


def _signal_name(signum: int | None) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return f"signal {signum}"


def run_job(cfg: DictConfig, *, run_dir, arm: dict, arm_id: str, overrides: list[str]) -> dict:
    """Train one (arm, seed) job in ``run_dir`` and return its ``result.json`` record.

    Never raises for a failed run unless ``cfg.strict``; a preemption signal whose previous
    handler is default/ignore ends the process with ``SystemExit(128 + signum)`` after the
    records are written (see :mod:`ptychostab.runs.signals`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = records.read_json(run_dir / records.RESULT)
    if previous.ok and records.is_final(previous.data.get("status")):
        log.info("SKIP %s: already %s", run_dir, previous.data["status"])
        return previous.data

    strict = bool(cfg.get("strict", False))
    with PreemptionGuard() as guard, _TorchGlobals():
        job = _Job(cfg, run_dir, arm, arm_id, overrides, guard)
        raised: BaseException | None = None
        try:
            job.setup()
            job.train()
            record = job.finish()
            if strict and record["status"] != records.OK:
                f = record["failure"]
                raised = TrainingFailure(f["kind"], epoch=f["epoch"], step=f["step"],
                                         message=f["message"], wall_s=f["wall_s"])
        except Preempted as p:
            record = job.record_preempted(p)
        except TrainingFailure as f:
            record = job.record_failure(f)
            raised = f if strict else None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            record = job.record_exception(err)
            raised = err if strict else None
        finally:
            job.drain_writes(strict=False)
            job.writer.close()
        if raised is not None:
            raise raised
        guard.chain()  # a signal that arrived: hand it on (submitit requeues, default exits)
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
    record = run_job(cfg, run_dir=args.run_dir, arm={}, arm_id=args.arm_id, overrides=[])
    print(f"status: {record['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
