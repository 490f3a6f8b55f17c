"""One run's experiment trackers, built on Lightning's logger classes, driven by the recorder.

A :class:`TrackerSet` holds the trackers ``logger=`` asked for (``csv``, ``tensorboard``,
``mlflow``, ``wandb``; none, one or several) for ONE run. It is not attached to a Trainer: the
run's recorder calls it (start, every epoch, every ``log_every_n_steps`` steps, end, restart),
so a process that trains several seeds holds one set per seed.

What every tracker receives
---------------------------
- identity, as tags / group / hyper-parameters: ``sweep``, ``arm_id``, ``arm_label``,
  ``seed``, ``stage`` (the decision rule's stage name), ``depth``, and the composed config
  flattened to ``a/b/c`` keys;
- per epoch, at ``step = global_step``: every ``history.csv`` column as ``epoch/<column>``;
- per step (every ``log_every_n_steps``): ``step/train_loss``, ``step/grad_norm_pre``,
  ``step/grad_norm_post`` (the values the sync point already copied to the host);
- at the end: ``result/status`` (tag or summary), ``result/failure_kind`` and every numeric
  result metric as ``result/<metric>``.

Where the data go
-----------------
``csv``: ``<run_dir>/csv/metrics.csv`` + ``hparams.yaml``. ``tensorboard``:
``<run_dir>/tensorboard/`` (event files). ``mlflow``: the tracking URI from the config, else
``MLFLOW_TRACKING_URI``, else a local file store ``<output_root>/mlruns`` (one MLflow
experiment per sweep). ``wandb``: project from the config, group = arm id, files under
``<run_dir>/wandb``, offline unless ``WANDB_MODE`` or the config says otherwise.

Resume continues the same tracker run: :meth:`TrackerSet.start` returns the ids (MLflow run
id, W&B run id, the TensorBoard / CSV folders) that the recorder stores in the manifest's
``trackers`` field, and a resumed run passes them back. A restart from scratch (a damaged
checkpoint) ends the old tracker runs, tagged ``restarted``, and starts new ones.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["EXTRA", "LOGGER_NAMES", "MissingTracker", "RunIdentity", "TrackerSet",
           "check_available", "flatten"]

LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "wandb")
EXTRA = "tracking"
#: the importable module each tracker needs (the ``[tracking]`` extra installs them)
REQUIRES = {"csv": None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
CSV_DIR, TB_DIR, WANDB_DIR = "csv", "tensorboard", "wandb"
MLRUNS = "mlruns"
RESULT_PREFIX, EPOCH_PREFIX, STEP_PREFIX = "result/", "epoch/", "step/"


class MissingTracker(ImportError):
    """A requested tracker's package is not installed."""


def check_available(names) -> None:
    """Raise :class:`MissingTracker` naming the extra if a requested tracker cannot import.

    Called before any work (the CLI preflight); imports nothing heavy (find_spec only).
    """
    missing = [(n, REQUIRES[n]) for n in names
               if REQUIRES.get(n) and importlib.util.find_spec(REQUIRES[n]) is None]
    if missing:
        what = ", ".join(f"logger {n} needs the package {pkg!r}" for n, pkg in missing)
        raise MissingTracker(f"{what}: install the optional extra with "
                             f"`pip install -e '.[{EXTRA}]'` (or choose logger=csv / none)")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to ``{"a/b/c": value}`` (:func:`ptychostab.runs.records.flatten` with
    ``/``, as trackers group keys), values a tracker accepts: None -> ``"null"``, lists and
    other objects -> their text."""
    from ptychostab.runs.records import flatten as _flatten

    def value(v: Any) -> Any:
        if v is None:
            return "null"
        return v if isinstance(v, (bool, int, float, str)) else str(v)

    return {k: value(v) for k, v in _flatten(dict(obj), prefix.rstrip("/"), "/").items()}


def _numbers(d: Mapping, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[f"{prefix}{k}"] = float(v)
    return out


@dataclass
class RunIdentity:
    """Who a run is, for the trackers' grouping."""

    sweep: str
    arm_id: str
    arm_label: str
    seed: int
    stage: str
    depth: int | None
    run_dir: Path
    output_root: Path
    config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arm_label}/seed={self.seed}"

    def fields(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "arm_id": self.arm_id, "arm_label": self.arm_label,
                "seed": self.seed, "stage": self.stage, "depth": self.depth}

    def tags(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.fields().items()}


class TrackerSet:
    """The trackers of one run.

    Parameters
    ----------
    settings : mapping
        ``{name: options}`` for each requested tracker (the composed ``logger`` node without
        its empty entries); see the module docstring for the options.
    identity : RunIdentity
    resume : mapping or None
        The manifest's ``trackers`` field of an earlier segment of this run: continue those
        tracker runs.
    """

    def __init__(self, settings: Mapping[str, Mapping | None], identity: RunIdentity,
                 resume: Mapping | None = None):
        unknown = sorted(set(settings) - set(LOGGER_NAMES))
        if unknown:
            raise ValueError(f"logger: unknown tracker(s) {unknown}; allowed {LOGGER_NAMES}")
        self.settings = {k: dict(v or {}) for k, v in settings.items()}
        self.identity = identity
        self.resume = dict(resume or {})
        self.loggers: dict[str, Any] = {}
        self.ids: dict[str, dict] = {}

    @property
    def names(self) -> list[str]:
        return [n for n in LOGGER_NAMES if n in self.settings]

    # -- lifecycle
    def start(self, *, restarted: bool = False) -> dict:
        """Create (or, with ``resume`` ids, reopen) every tracker and log the identity and
        hyper-parameters. Returns the ids for the manifest's ``trackers`` field."""
        check_available(self.names)
        for name in self.names:
            build = getattr(self, f"_build_{name}")
            self.loggers[name], self.ids[name] = build(self.settings[name],
                                                       None if restarted else
                                                       self.resume.get(name))
        hparams = {**flatten(self.identity.config, "config/"),
                   **flatten(self.identity.fields(), "run/")}
        for name, lg in self.loggers.items():
            if self.resume.get(name) and not restarted:
                continue  # a resumed run logged them already (MLflow refuses changing params)
            try:
                lg.log_hyperparams(hparams)
            except Exception as err:  # a tracker must never cost the run
                log.warning("tracker %s: logging hyper-parameters failed: %r", name, err)
        if restarted:
            for n in self.ids:
                self.ids[n]["restarted"] = True
        return self.ids

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Everything ``history.csv`` has for one epoch, at the epoch's global step."""
        step = int(row.get("global_step") or 0)
        metrics = _numbers(row, EPOCH_PREFIX)
        metrics["epoch"] = float(row.get("epoch", 0))
        self._log(metrics, step)

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        """Per-step values (train loss, grad norms) at ``step``."""
        self._log(_numbers(values, STEP_PREFIX), int(step))

    def end(self, record: Mapping | None, *, final: bool) -> None:
        """Log the result and close the trackers (``final``: the run ended for good; a
        non-final ending leaves the tracker run open for the resume)."""
        record = dict(record or {})
        status = str(record.get("status"))
        failure = record.get("failure") or {}
        metrics = _numbers(record.get("metrics") or {}, RESULT_PREFIX)
        step = int(record.get("global_step") or 0)
        self._log(metrics, step)
        tags = {"status": status, "failure_kind": str(failure.get("kind")),
                "final": str(final)}
        self._tag(tags)
        outcome = ("success" if status == "ok" else "failed") if final else "killed"
        self.close(outcome)

    def restart_event(self, reason: str) -> None:
        """The run restarts from scratch: tag and end the current tracker runs."""
        self._tag({"status": "restarted", "restart_reason": reason[:500]})
        self.close("killed")

    def close(self, outcome: str = "success") -> None:
        for name, lg in list(self.loggers.items()):
            try:
                lg.finalize(outcome if name != "mlflow" else _mlflow_status(outcome))
                if name == "wandb":  # this run's handle, not the process-global wandb.run
                    lg.experiment.finish(exit_code=0 if outcome == "success" else 1)
            except Exception as err:
                log.warning("tracker %s: closing failed: %r", name, err)
        self.loggers.clear()

    # -- helpers
    def _log(self, metrics: dict, step: int) -> None:
        if not metrics:
            return
        for name, lg in self.loggers.items():
            try:
                lg.log_metrics(metrics, step=step)
                if name == "csv":
                    lg.save()
            except Exception as err:
                log.warning("tracker %s: logging metrics failed: %r", name, err)

    def _tag(self, tags: dict[str, str]) -> None:
        for name, lg in self.loggers.items():
            try:
                if name == "mlflow":
                    for k, v in tags.items():
                        lg.experiment.set_tag(lg.run_id, k, v)
                elif name == "wandb":
                    lg.experiment.summary.update({f"result/{k}": v for k, v in tags.items()})
                elif name == "tensorboard":
                    lg.experiment.add_text("result", ", ".join(f"{k}={v}"
                                                               for k, v in tags.items()))
                elif name == "csv":
                    lg.log_hyperparams({f"result/{k}": v for k, v in tags.items()})
            except Exception as err:
                log.warning("tracker %s: tagging failed: %r", name, err)

    # -- builders: (logger, ids)
    def _build_csv(self, opts: dict, resume: dict | None):
        from lightning.pytorch.loggers import CSVLogger

        folder = self.identity.run_dir / CSV_DIR
        kept = _read_csv_rows(folder / "metrics.csv") if resume else []
        lg = CSVLogger(save_dir=str(self.identity.run_dir), name=CSV_DIR, version="")
        if kept:  # Lightning's writer deletes an existing metrics.csv: carry its rows over
            lg.experiment.metrics.extend(kept)
            lg.save()
        if resume and (folder / "hparams.yaml").exists():
            import yaml

            try:
                lg.experiment.hparams.update(
                    yaml.safe_load((folder / "hparams.yaml").read_text()) or {})
            except (OSError, yaml.YAMLError) as err:
                log.warning("tracker csv: earlier hparams.yaml unreadable: %r", err)
        return lg, {"dir": str(folder.relative_to(self.identity.run_dir))}

    def _build_tensorboard(self, opts: dict, resume: dict | None):
        from lightning.pytorch.loggers import TensorBoardLogger

        lg = TensorBoardLogger(save_dir=str(self.identity.run_dir), name=TB_DIR, version="",
                               default_hp_metric=False)
        return lg, {"dir": TB_DIR}

    def _build_mlflow(self, opts: dict, resume: dict | None):
        from lightning.pytorch.loggers import MLFlowLogger

        uri = (opts.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
               or f"file:{(self.identity.output_root / MLRUNS).resolve()}")
        if uri.startswith("file:"):
            # A file store: safe for many concurrent jobs on a shared filesystem (SQLite is
            # not); MLflow 3 keeps it behind this switch.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        experiment = opts.get("experiment_name") or self.identity.sweep
        run_id = (resume or {}).get("run_id")
        lg = MLFlowLogger(experiment_name=experiment, run_name=self.identity.name,
                          tracking_uri=uri, tags=None if run_id else self.identity.tags(),
                          run_id=run_id)
        _ = lg.experiment  # create the run now: its id goes into the manifest
        if run_id:  # reopened after a non-final ending (KILLED): running again
            lg.experiment.update_run(run_id, status="RUNNING")
        return lg, {"run_id": lg.run_id, "experiment_id": lg.experiment_id,
                    "experiment_name": experiment, "tracking_uri": uri}

    def _build_wandb(self, opts: dict, resume: dict | None):
        from lightning.pytorch.loggers import WandbLogger

        mode = opts.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        run_id = (resume or {}).get("id") or _new_wandb_id()
        save_dir = self.identity.run_dir
        lg = WandbLogger(project=opts.get("project") or "ptychostab", entity=opts.get("entity"),
                         name=self.identity.name, group=self.identity.arm_id,
                         job_type=f"stage_{self.identity.stage}", id=run_id, resume="allow",
                         save_dir=str(save_dir), mode=mode, reinit="create_new",
                         tags=[f"{k}={v}" for k, v in self.identity.tags().items()])
        _ = lg.experiment
        return lg, {"id": run_id, "project": opts.get("project") or "ptychostab",
                    "mode": mode, "dir": WANDB_DIR}


def _mlflow_status(outcome: str) -> str:
    return {"success": "success", "failed": "failed"}.get(outcome, "KILLED")


def _new_wandb_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def _read_csv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [{k: float(v) for k, v in r.items() if k is not None and v not in ("", None)}
                    for r in csv.DictReader(fh)]
    except (OSError, ValueError, csv.Error):
        return []
