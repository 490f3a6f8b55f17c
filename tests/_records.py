"""Synthetic run records for the aggregator, report, launch and status tests (each folder's
conftest.py imports the fixtures below) and the benchmark, which loads this file.

``write_run`` writes one run folder exactly as the record contract says
(:mod:`ptychostab.runs.records`): ``manifest.json``, ``history.csv``, ``result.json``;
each can be left out or damaged by the caller. Values are deterministic functions of the
arguments, so tests can state exact expected numbers.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from ptychostab.runs import records

CONTROL = {"arch": "hybrid", "clip": "none", "clip_value": None, "depth": 4, "label": "hybrid"}
ARCH_FIX = {"arch": "stable_hybrid", "clip": "none", "clip_value": None, "depth": 4,
            "label": "stable_hybrid"}
OPT_FIX = {"arch": "hybrid", "clip": "agc", "clip_value": 0.01, "depth": 4,
           "label": "hybrid+agc0.01"}
ROLE_ARMS = {"control": CONTROL, "arch_fix": ARCH_FIX, "opt_fix": OPT_FIX}


def at_depth(arm: dict, depth: int) -> dict:
    return {**arm, "depth": depth}


def arm_id_of(arm: dict) -> str:
    """A stable short id like the real one (hash of the arm's fields)."""
    text = ",".join(f"{k}={arm[k]}" for k in sorted(arm) if k != "label")
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def metrics_for(loss: float | None, phase_constant: bool = False) -> dict:
    """A full ``metrics`` block whose values derive from ``loss`` (None -> all None)."""
    if loss is None:
        keys = ("best_val_loss", "final_val_loss", "amp_ssim", "phase_ssim", "amp_mae",
                "phase_mae", "amp_psnr", "phase_psnr", "amp_frc50", "phase_frc50")
        return {"val_loss_name": "mae_val_loss", "phase_truth_constant": phase_constant,
                **{k: None for k in keys}}
    return {"val_loss_name": "mae_val_loss", "best_val_loss": loss,
            "final_val_loss": round(loss * 1.1, 10), "amp_ssim": round(1 - loss, 10),
            "phase_ssim": round(1 - 2 * loss, 10), "amp_mae": round(3 * loss, 10),
            "phase_mae": round(4 * loss, 10), "amp_psnr": round(40 - 100 * loss, 10),
            "phase_psnr": round(30 - 100 * loss, 10), "amp_frc50": 0.25, "phase_frc50": 0.2,
            "phase_truth_constant": phase_constant}


def config_for(arm: dict, set_phi: bool = True, epochs: int = 50, **changes) -> dict:
    """A manifest ``config`` that follows the study's declared protocol at the arm's depth
    (conf/decision/default.yaml), with the arm's architecture and clipping; ``changes``
    (dotted keys, ``"data.N": 32``) applied on top."""
    depth = arm.get("depth")
    cfg = {"depth": depth, "outside_study": False,
           "data": {"name": "grid_lines_n64", "N": 64, "size": 392, "n_lines": 400,
                    "nimgs_train": 2, "nimgs_test": 2, "nphotons": 1.0e9, "set_phi": set_phi},
           "arch": {"name": arm["arch"], "fno_blocks": depth, "hidden_channels": 32},
           "clip": {"algorithm": arm["clip"], "value": arm.get("clip_value")},
           "trainer": {"max_epochs": epochs, "batch_size": 16, "lr": 1.0e-3,
                       "optimizer": "adam", "scheduler": "none", "loss": "mae"},
           "failure": {"grad_norm_bound": 1.0e6}}
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cfg


def history_rows(epochs: int, loss: float, explode_at: int | None = None) -> list[dict]:
    rows = []
    for e in range(epochs):
        v = loss * (1 + 4.0 / (e + 1))
        g = 1.0 + 0.01 * e
        if explode_at is not None and e >= explode_at:
            v, g = math.nan, math.inf
        rows.append({"epoch": e, "global_step": 100 * (e + 1), "train_loss": v, "val_loss": v,
                     "grad_norm_pre_mean": g, "grad_norm_pre_median": g,
                     "grad_norm_pre_max": 2 * g, "grad_norm_post_mean": min(g, 1.0),
                     "grad_norm_post_median": min(g, 1.0), "grad_norm_post_max": min(g, 1.0),
                     "lr": 1e-3, "wall_s": 10.0 * (e + 1)})
    return rows


def write_run(sweep_dir: Path, arm: dict, seed: int, status: str = "ok", *,
              loss: float | None = 0.02, epochs: int = 50, fail_epoch: int | None = None,
              sweep: str | None = None, commit: str = "c0ffee0", dirty: bool = False,
              set_phi: bool = True, phase_constant: bool = False, manifest: bool = True,
              result: bool = True, history: bool = True, recon: bool = False,
              config: dict | None = None) -> Path:
    """Write ``<sweep_dir>/<arm_id>/seed=<seed>/`` records; return the run folder.

    ``status`` != ok needs ``fail_epoch`` for failure kinds (default: epoch 10). The failure
    is at 0-based epoch ``fail_epoch``; the history then has ``fail_epoch + 1`` rows. The
    manifest's config follows the study's declared protocol (:func:`config_for`); ``config``
    changes it (``{"trainer.lr": 0.01}``, dotted keys).
    """
    sweep = sweep or Path(sweep_dir).name
    aid = arm_id_of(arm)
    run = Path(sweep_dir) / aid / f"seed={seed}"
    run.mkdir(parents=True, exist_ok=True)
    failed = status in records.FAILURE_KINDS
    if failed and fail_epoch is None:
        fail_epoch = 10
    done_epochs = fail_epoch if failed else epochs
    if manifest:
        records.atomic_write_json(run / records.MANIFEST, {
            "schema_version": records.SCHEMA_VERSION, "sweep": sweep, "arm": dict(arm),
            "arm_id": aid, "seed": seed, "overrides": [f"arch={arm['arch']}", f"seed={seed}"],
            "config": config_for(arm, set_phi=set_phi, epochs=epochs, **(config or {})),
            "config_hash": "h" + aid, "git": {"commit": commit, "dirty": dirty},
            "versions": {}, "host": "test", "device": "cpu", "slurm": {},
            "start_time": "2026-01-01T00:00:00Z", "effective": {}})
    if history:
        n = (fail_epoch + 1) if failed else epochs
        records.write_history(run / records.HISTORY, history_rows(
            n, loss if loss is not None else 0.1, explode_at=fail_epoch if failed else None))
    if result:
        fail = None
        if status != records.OK:
            fail = records.failure(status, epoch=fail_epoch, step=None if fail_epoch is None
                                   else 100 * fail_epoch + 7,
                                   wall_s=None if fail_epoch is None else 10.0 * fail_epoch + 3,
                                   message=f"synthetic {status}")
        mets = metrics_for(loss if status == records.OK else None, phase_constant)
        records.atomic_write_json(run / records.RESULT, records.result_record(
            status=status, sweep=sweep, arm_id=aid, seed=seed, failure_info=fail,
            metrics=mets, metrics_best=mets,
            grad_norm={"grad_norm_pre_median": 1.2, "grad_norm_pre_max": 5.0,
                       "grad_norm_post_median": 1.0, "grad_norm_post_max": 1.0,
                       "clip_fraction": 0.0},
            epochs_completed=done_epochs if done_epochs is not None else 0,
            global_step=100 * (done_epochs or 0), wall_s=10.0 * (done_epochs or 0) + 5,
            params={"real": 1000 + len(arm["arch"]), "numel": 900}, peak_memory_bytes=2**20,
            arm=dict(arm)))
    if recon:
        y, x = np.mgrid[0:16, 0:16] / 16.0
        truth = (1 + x) * np.exp(1j * y)
        pred = truth * (1 + (loss or 0.1))
        np.savez(run / "recon.npz", pred=pred, truth=truth)
    return run


def write_plan(sweep_dir: Path, entries: list[tuple[dict, int]], sweep: str | None = None) -> Path:
    """``plan.csv`` for (arm, seed) pairs with the launcher's columns plus the arm columns."""
    sweep = sweep or Path(sweep_dir).name
    fields = ["sweep", "arm_id", "arm_label", "seed", "overrides", "arch", "clip",
              "clip_value", "depth"]
    path = Path(sweep_dir) / "plan.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for arm, seed in entries:
            w.writerow({"sweep": sweep, "arm_id": arm_id_of(arm), "arm_label": arm["label"],
                        "seed": seed, "overrides": f"arch={arm['arch']} seed={seed}",
                        "arch": arm["arch"], "clip": arm["clip"],
                        "clip_value": "" if arm["clip_value"] is None else arm["clip_value"],
                        "depth": arm["depth"]})
    return path


def write_arm(sweep_dir: Path, arm: dict, outcomes: list, **kw) -> None:
    """One run per entry of ``outcomes``, seeds 0..: a float = ok with that loss, a status
    string = that failure at epoch 10 + seed, ``None`` = planned but never run."""
    for seed, out in enumerate(outcomes):
        if out is None:
            continue
        if isinstance(out, str):
            write_run(sweep_dir, arm, seed, out, fail_epoch=10 + seed, **kw)
        else:
            write_run(sweep_dir, arm, seed, "ok", loss=out, **kw)


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """Synthetic records need no durability; skipping fsync keeps these tests fast."""
    monkeypatch.setattr(records.os, "fsync", lambda fd: None)


@pytest.fixture
def factory():
    """The module's writers, for tests: ``factory.write_run(...)`` etc."""
    import types

    return types.SimpleNamespace(
        write_run=write_run, write_plan=write_plan, write_arm=write_arm, arm_id_of=arm_id_of,
        at_depth=at_depth, CONTROL=CONTROL, ARCH_FIX=ARCH_FIX, OPT_FIX=OPT_FIX,
        ROLE_ARMS=ROLE_ARMS, config_for=config_for)
