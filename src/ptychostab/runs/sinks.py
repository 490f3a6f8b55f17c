"""The per-run sinks a job plugs into its recorder, built from the config.

:func:`build_sinks` is the one place that decides which :class:`~.sink.Sink` objects a run
gets: a new per-run side effect is a Sink class plus one line here, not an edit of the job.

- :class:`ActivationSink`: ``activations.csv``, the drift probe every epoch (``diagnostics``);
- :class:`TrackerSink`: the tracker runs (CSV, TensorBoard, MLflow, W&B) and the manifest's
  ``trackers`` ids (``logger``, ``trainer.log_every_n_steps``);
- :class:`ProgressSink`: the terminal's progress bar or the per-epoch line
  (``trainer.progress``).

The recorder's own files (manifest, history, result, checkpoints, ``run.log``, ``run.lock``)
are not sinks. All three keys are run-only: they change neither the arm id nor the protocol.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

from ptychostab.runs import records
from ptychostab.runs.recorder import RunRecorder
from ptychostab.runs.sink import Sink

__all__ = ["ActivationSink", "ProgressSink", "TrackerSink", "build_sinks", "logger_settings",
           "progress_mode"]

log = logging.getLogger(__name__)


def _get(cfg, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:
            return default
    return default if node is None else node


def logger_settings(cfg) -> dict[str, dict]:
    """The trackers ``logger=`` enabled: ``{name: options}`` (an empty or null entry is off)."""
    node = _get(cfg, "logger", {}) or {}
    out = {}
    for name in ("csv", "tensorboard", "mlflow", "wandb"):
        opts = node.get(name) if hasattr(node, "get") else None
        if opts is not None and (not hasattr(opts, "get") or opts.get("enabled", True)):
            out[name] = {k: v for k, v in dict(opts).items() if k != "enabled"}
    return out


def progress_mode(setting: str, stream=None) -> str:
    """``auto`` -> ``bar`` on a terminal, else ``log``; other values as they are."""
    if setting != "auto":
        return setting
    stream = stream if stream is not None else sys.stderr
    return "bar" if getattr(stream, "isatty", lambda: False)() else "log"


def build_sinks(cfg, *, packed: bool = False) -> list[Sink]:
    """The sinks for one run of ``cfg`` (the composed config), in hook order. ``packed``
    (a seed of a pack, :mod:`.pack`): a progress bar becomes the per-epoch line (one bar per
    seed is noise), and the line names the seed."""
    sinks: list[Sink] = []
    every = int(_get(cfg, "diagnostics.every_n_epochs", 1))
    if every > 0:
        sinks.append(ActivationSink(every))
    trackers = logger_settings(cfg)
    if trackers:
        every = _get(cfg, "trainer.log_every_n_steps", None)
        every = int(_get(cfg, "trainer.sync_every", 50) if every is None else every)
        sinks.append(TrackerSink(trackers, every))
    mode = progress_mode(str(_get(cfg, "trainer.progress", "auto")))
    if mode != "none":
        label = f"seed={_get(cfg, 'seed')} " if packed else ""
        sinks.append(ProgressSink("log" if packed else mode, label=label))
    return sinks


# --- activation drift ------------------------------------------------------------------------
class ActivationSink(Sink):
    """``activations.csv``: the drift probe at initialisation (epoch -1) and after every
    ``every_n_epochs``-th epoch (:mod:`ptychostab.diagnostics.drift`).

    The probe runs at the epoch end, before the epoch's checkpoints land; a resume keeps the
    rows of the completed epochs only, and re-measures the last completed epoch from the
    restored weights if its rows did not land before the kill (an epoch-end checkpoint holds
    exactly the weights they were measured on)."""

    files = (records.ACTIVATIONS,)

    def __init__(self, every_n_epochs: int):
        self.every = int(every_n_epochs)
        self.log = None

    def on_ready(self, run: RunRecorder, module) -> None:
        from ptychostab.diagnostics.drift import ActivationLog

        self.log = ActivationLog(run.path(records.ACTIVATIONS), every_n_epochs=self.every)
        self.log.attach(module.generator, module.val_data, module.device_)
        at_epoch_end = run.checkpoint is not None and module.step_in_epoch == 0
        self.log.start(completed_epochs=module.epoch, weights_at_epoch_end=at_epoch_end,
                       initial_weights=module.global_step_count == 0)

    def on_epoch_end(self, run: RunRecorder, module, row: dict, is_best: bool) -> None:
        if self.log is not None:
            self.log.epoch_end(int(row["epoch"]))

    def on_restart(self, run: RunRecorder, event: dict) -> None:
        if self.log is not None:
            self.log.rows = []


# --- trackers --------------------------------------------------------------------------------
class TrackerSink(Sink):
    """One :class:`~ptychostab.tracking.TrackerSet` per run (so a packed process holds one per
    seed): identity and hyper-parameters at start, every history row per epoch, the train
    loss and grad norms every ``log_every_n_steps`` steps, the result at the end. The tracker
    ids go into the manifest's ``trackers`` field; a resumed segment continues those runs, a
    restart from scratch starts new ones (tagged ``restarted``)."""

    files = ("csv",)  # TensorBoard's and W&B's folders are appended to, never set aside

    def __init__(self, settings: dict[str, dict], log_every_n_steps: int):
        self.settings = dict(settings)
        self.every = int(log_every_n_steps)
        self.trackers = None
        self.restart_reason: str | None = None

    def on_restart(self, run: RunRecorder, event: dict) -> None:
        self.restart_reason = str(event.get("reason", "restart"))
        if self.trackers is not None:  # a restart during the segment
            self.trackers.restart_event(self.restart_reason)
            self.trackers = None

    def on_start(self, run: RunRecorder) -> None:
        from ptychostab.tracking import RunIdentity, TrackerSet

        cfg = run.config
        depth = cfg.get("depth")
        identity = RunIdentity(
            sweep=str(run.sweep), arm_id=run.arm_id, arm_label=run.arm_id.rsplit("-", 1)[0],
            seed=run.seed, stage=_stage(run.sweep, depth, bool(cfg.get("outside_study"))),
            depth=depth, run_dir=run.run_dir,
            output_root=Path(str(_get(cfg, "paths.output_root", run.run_dir.parent.parent))),
            config=cfg)
        previous = run.previous_manifest.get("trackers") or {}
        restarted = self.restart_reason is not None
        self.trackers = TrackerSet(self.settings, identity,
                                   resume=None if restarted else previous)
        ids = self.trackers.start(restarted=restarted)
        if restarted:
            log.info("trackers: new tracker runs after a restart (%s)", self.restart_reason)
        elif previous:
            log.info("trackers: continuing %s", ", ".join(sorted(previous)))
        run.annotate("trackers", ids)

    def on_sync(self, run: RunRecorder, module, step: int, values: dict) -> None:
        if self.trackers is not None and self.every and step % self.every == 0 and values:
            self.trackers.log_step(step, values)

    def on_epoch_end(self, run: RunRecorder, module, row: dict, is_best: bool) -> None:
        if self.trackers is not None:
            self.trackers.log_epoch(row)

    def on_end(self, run: RunRecorder, record: dict | None) -> None:
        if self.trackers is not None:
            status = (record or {}).get("status")
            self.trackers.end(record, final=records.is_final(status))
            self.trackers = None


def _stage(sweep, depth, outside: bool = False) -> str:
    """The stage as the default decision rule names it (``A``, ``B``, ``clip``, ``outside``
    or "")."""
    try:
        from ptychostab.identity import stage_from_rule_file

        return stage_from_rule_file(sweep, depth, outside=outside)
    except Exception as err:  # naming the stage must never cost the run
        log.warning("trackers: stage of sweep %r unknown: %r", sweep, err)
        return ""


# --- progress --------------------------------------------------------------------------------
def _eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressSink(Sink):
    """What a person watching one run sees.

    ``bar`` (a terminal): a tqdm bar over the run's steps, updated at the sync points (epoch,
    step of steps, steps/s, ETA, last train loss and grad norm). ``log`` (SLURM logs, pipes):
    one line per epoch with the epoch's numbers, steps/s and the run's ETA, no carriage
    returns. Either way the per-epoch line goes to the run's log (``run.log``). In a pack
    (``build_sinks(cfg, packed=True)``) the mode is ``log`` and the line starts ``seed=<k>``."""

    def __init__(self, mode: str, stream=None, label: str = ""):
        if mode not in ("bar", "log"):
            raise ValueError(f"trainer.progress={mode!r}; allowed: auto, bar, log, none")
        self.mode, self.label = mode, label  # label: "seed=<k> " in a pack
        self.stream = stream
        self.bar = None
        self.total = 0
        self.t0 = 0.0
        self.step0 = 0

    def on_ready(self, run: RunRecorder, module) -> None:
        module.log_epoch_line = False  # this sink writes the epoch line (with rate and ETA)
        self.per_epoch = module.batches.batches_per_epoch
        self.max_epochs = module.settings.max_epochs
        self.total = self.max_epochs * self.per_epoch
        self.t0, self.step0 = time.monotonic(), module.global_step_count
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=module.global_step_count, unit="step",
                            desc=f"{run.arm_id.rsplit('-', 1)[0]} seed={run.seed}",
                            file=self.stream or sys.stderr, dynamic_ncols=True, leave=True)

    def rate(self, step: int) -> float:
        dt = time.monotonic() - self.t0
        return (step - self.step0) / dt if dt > 0 and step > self.step0 else math.nan

    def on_sync(self, run: RunRecorder, module, step: int, values: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(step - self.bar.n)
        post = {"epoch": f"{module.epoch + 1}/{self.max_epochs}"}  # the epoch in progress
        if values:
            post.update(loss=f"{values.get('train_loss', math.nan):.4g}",
                        gnorm=f"{values.get('grad_norm_pre', math.nan):.3g}")
        self.bar.set_postfix(post, refresh=False)

    def on_epoch_end(self, run: RunRecorder, module, row: dict, is_best: bool) -> None:
        step = int(row.get("global_step") or module.global_step_count)
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate and math.isfinite(rate) else math.nan
        log.info("%sepoch %d/%d: train %.5g val %.5g grad pre med %.3g max %.3g lr %.3g | "
                 "step %d/%d, %.1f steps/s, ETA %s", self.label, int(row["epoch"]) + 1,
                 self.max_epochs,
                 row.get("train_loss", math.nan), row.get("val_loss", math.nan),
                 row.get("grad_norm_pre_median", math.nan),
                 row.get("grad_norm_pre_max", math.nan), row.get("lr", math.nan), step,
                 self.total, rate, _eta(eta))

    def on_end(self, run: RunRecorder, record: dict | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
