"""The per-stage tables of report.md: stability, loss, metrics and the per-seed evidence."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ptychostab.analysis.rule import fmt
from ptychostab.analysis.summary import NOT_FINAL
from ptychostab.report.markdown import relative_path, table
from ptychostab.runs import records

FAMILY_ORDER = {"instability": 0, "other final": 1, "not final": 2, "ok": 3}


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def rate_cell(r) -> str:
    """``1/3 = 0.333 [lo, hi]``; ``0/0 = n/a`` (never 0%)."""
    if not r["n_done"]:
        return "0/0 = n/a"
    return (f"{r['n_instability']}/{r['n_done']} = {fmt(_num(r['failure_rate']))} "
            f"[{fmt(_num(r['failure_rate_lo']))}, {fmt(_num(r['failure_rate_hi']))}]")


def _kinds(r, kinds) -> str:
    parts = [f"{r[f'n_{k}']} {k}" for k in kinds if r.get(f"n_{k}", 0)]
    return ", ".join(parts) if parts else "0"


def _km(x) -> str:
    x = _num(x)
    return fmt(x) if math.isfinite(x) else "not reached"


def stability_table(g: pd.DataFrame) -> list[str]:
    header = ["Arm", "Role", "Planned", "OK", "Instability", "Failure rate [95% Wilson]",
              "Other final (beside)", "Not final (beside)", "KM median epoch", "KM median s",
              "Survival at end", "Grad norm median / max"]
    rows = [[r["arm_label"], r["role"] or "-", r["n_planned"], r["n_ok"],
             _kinds(r, records.INSTABILITY_KINDS), rate_cell(r),
             _kinds(r, records.OTHER_FINAL_KINDS),
             _kinds(r, NOT_FINAL),
             _km(r["km_median_epoch"]), _km(r["km_median_s"]),
             fmt(_num(r["km_survival_final"])) if r["n_planned"] else "n/a",
             f"{fmt(_num(r.get('grad_norm_pre_median_median')))} / "
             f"{fmt(_num(r.get('grad_norm_pre_max_max')))}"]
            for _, r in g.iterrows()]
    return table(header, rows)


def os_interval(r, m: str, level: float) -> str:
    cov = _num(r.get(f"{m}_os_coverage"))
    if not math.isfinite(cov):
        return f"n/a at {level:.0%}"
    return f"[{fmt(_num(r[f'{m}_os_lo']))}, {fmt(_num(r[f'{m}_os_hi']))}] ({cov:.1%})"


def _pct(x) -> str:
    x = _num(x)
    return "n/a" if not math.isfinite(x) else f"{x:+.1%}"


def _change_cells(r) -> list[str]:
    if not r["control_arm_id"]:
        return ["no control", "-"]
    if r["control_arm_id"] == r["arm_id"] and r["control_sweep"] == r["sweep"]:
        return ["(control)", "-"]
    return [_pct(r["rel_change"]), f"[{_pct(r['rel_change_lo'])}, {_pct(r['rel_change_hi'])}]"]


def loss_table(g: pd.DataFrame, metric: str, level: float) -> list[str]:
    header = ["Arm", "Values", f"median {metric}", "[q25, q75]",
              "median interval (order statistics, coverage)", "vs control",
              "95% bootstrap CI"]
    rows = []
    for _, r in g.iterrows():
        if f"{metric}_median" not in r:
            continue
        rows.append([r["arm_label"], r[f"{metric}_n"], fmt(_num(r[f"{metric}_median"])),
                     f"[{fmt(_num(r[f'{metric}_q25']))}, {fmt(_num(r[f'{metric}_q75']))}]",
                     os_interval(r, metric, level), *_change_cells(r)])
    return table(header, rows)


def metrics_table(g: pd.DataFrame, metric_names: list[str]) -> list[str]:
    header = ["Arm", *metric_names]
    rows = [[r["arm_label"], *(f"{fmt(_num(r[f'{m}_median']))} [{fmt(_num(r[f'{m}_q25']))}, "
                               f"{fmt(_num(r[f'{m}_q75']))}]" for m in metric_names)]
            for _, r in g.iterrows()]
    return table(header, rows)


def _failure_cell(r) -> str:
    e, s = _num(r["failure_epoch"]), _num(r["failure_step"])
    if r["status"] == records.OK or not (math.isfinite(e) or math.isfinite(s)):
        return "-"
    return f"{fmt(e) if math.isfinite(e) else '?'} / {fmt(s) if math.isfinite(s) else '?'}"


def evidence_table(runs: pd.DataFrame, out_dir: Path | None) -> list[str]:
    """Per-seed table of one stage's runs: failed runs first (instability, other final, not
    final), then ok; run folder and ``run.log`` relative to the report."""
    g = runs.assign(_o=runs["category"].map(FAMILY_ORDER).fillna(9))
    g = g.sort_values(["_o", "arm_label", "seed"], kind="stable")
    header = ["Arm", "Seed", "Status (family)", "Failure epoch / step", "Best val loss",
              "Final val loss", "Max grad norm", "Wall s", "Run folder", "Log"]
    rows = []
    for _, r in g.iterrows():
        folder = relative_path(r.get("_path"), out_dir)
        log = relative_path(r.get("_path"), out_dir, str(r["log"])) if r.get("log") else None
        rows.append([r["arm_label"], r["seed"], f"{r['status']} ({r['category']})",
                     _failure_cell(r), fmt(_num(r.get("best_val_loss"))),
                     fmt(_num(r.get("final_val_loss"))), fmt(_num(r.get("grad_norm_pre_max"))),
                     fmt(_num(r.get("wall_s"))),
                     f"[{folder}]({folder})" if folder else f"{r['run_dir']} (no folder)",
                     f"[run.log]({log})" if log else "-"])
    return table(header, rows)


def pack_section(runs: pd.DataFrame) -> list[str]:
    """``## Packed runs`` when any run was trained in a pack (``pack_size`` > 1), else nothing:
    time-to-failure in seconds per pack size (K seeds in one process share its wall clock)
    and the peak memory per pack size, marked shared (a packed run's ``peak_memory_bytes`` is
    its pack's process's peak). Epoch counts are per seed and compare across pack sizes."""
    if "pack_size" not in runs or not (runs["pack_size"].fillna(1) > 1).any():
        return []
    header = ["Pack size", "Runs", "Instability", "Time to failure s (median of events)",
              "Wall s (median, ok)", "Peak memory GB (median)"]
    rows = []
    g = runs.assign(_k=runs["pack_size"].fillna(1).astype(int))
    for k, sel in g.groupby("_k", sort=True):
        started = sel[sel["started"].fillna(False).astype(bool)]
        events = started[started["event"].fillna(False).astype(bool)]
        ok = started[started["status"] == records.OK]
        peak = pd.to_numeric(started["peak_memory_bytes"], errors="coerce").dropna()
        mem = fmt(float(peak.median()) / 1e9) if len(peak) else "n/a"
        rows.append([k, len(started), len(events),
                     fmt(float(pd.to_numeric(events["tte_s"], errors="coerce").median()))
                     if len(events) else "n/a",
                     fmt(float(pd.to_numeric(ok["wall_s"], errors="coerce").median()))
                     if len(ok) else "n/a",
                     f"{mem} (shared by {k} seeds)" if k > 1 else mem])
    return (["## Packed runs", "",
             "Seeds of a pack trained in one process: its wall clock and its peak memory are "
             "the pack's, so seconds (and the KM median s above) compare only within one pack "
             "size, and a packed run's peak memory is shared by the pack's seeds, not its own. "
             "Epochs and steps are per seed.", ""]
            + table(header, rows) + [""])
