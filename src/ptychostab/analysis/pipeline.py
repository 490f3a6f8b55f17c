"""Aggregate sweep folders into one typed result: compute, then (elsewhere) write.

``aggregate([outputs/stage_a, outputs/stage_b])`` scans the folders
(:mod:`ptychostab.analysis.collect`), tags every run with its stage, summarises each arm and
resolves the roles once (:mod:`ptychostab.analysis.summary`, :mod:`.roles`), evaluates the
decision rule (:mod:`ptychostab.analysis.decide`), and gathers the caveats, the clip sweep's
and the activation drift's numbers and (``plot_inputs``) the files the plots draw from. It
returns a :class:`StudyResult` and writes nothing: :func:`ptychostab.report.outputs.write_outputs`
writes runs.csv, summary.csv, report.md and plots/ from it. It reads records only; it never
imports training code, nor the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ptychostab.analysis import activation_drift, caveats, clipsweep, protocol, stats
from ptychostab.analysis import decide as dec
from ptychostab.analysis.collect import Collected, collect
from ptychostab.analysis.plot_inputs import PlotInputs, load_plot_inputs
from ptychostab.analysis.roles import Roles
from ptychostab.analysis.rule import OUTSIDE, STAGES, DecisionRule, by_depth, stage_of
from ptychostab.analysis.summary import summarize


@dataclass
class StudyResult:
    """Everything the aggregation computed: the report and the CLI read it, nothing more."""

    sweep_dirs: list[Path]
    rule: DecisionRule
    control: str | None  # the --control override, if any
    runs: pd.DataFrame  # one row per planned or found run (``stage``, ``role``; ``_path``)
    summary: pd.DataFrame  # one row per (stage, sweep, arm_id)
    roles: Roles
    decision: dec.Decision
    protocols: dec.Protocols  # (stage, sweep, arm_id) -> ArmProtocol (every manifest read)
    warnings: list[str]
    metric_names: list[str]
    arm_columns: list[str]
    drift: activation_drift.DriftData
    clip: clipsweep.ClipNumbers | None  # None: no clip sweep aggregated
    plot_inputs: PlotInputs | None  # None: not read (``aggregate(plot_inputs=False)``)
    reps: int = stats.BOOTSTRAP_REPS  # bootstrap resamples and seed behind the intervals
    seed: int = stats.BOOTSTRAP_SEED
    staged_by_depth: list[str] = field(default_factory=list)  # sweeps staged by the fallback
    outside: list[str] = field(default_factory=list)  # sweeps declared outside the study

    @property
    def sources(self) -> list[str]:
        """The sweep folders' names, as the report names them."""
        return [d.name for d in self.sweep_dirs]


def aggregate(sweep_dirs: list[str | os.PathLike], rule: DecisionRule | None = None,
              control: str | None = None, require_complete: bool = False,
              plot_inputs: bool = True, reps: int = stats.BOOTSTRAP_REPS,
              seed: int = stats.BOOTSTRAP_SEED) -> StudyResult:
    """Collect, summarise, decide; read what the plots need; write nothing.

    Parameters
    ----------
    sweep_dirs : list of path
        Sweep folders (``outputs/<sweep>``); Stage A and Stage B may be separate folders.
    rule : DecisionRule, optional
        Default: ``conf/decision/default.yaml``.
    control : str, optional
        Arm label(s) or arm_id(s), comma-separated, that play the control (overrides the
        rule's control role; a stage uses the one among its arms).
    require_complete : bool, default False
        Raise :class:`IncompleteSweepError` (before computing anything) when a planned run is
        unfinished (missing, timeout, preempted, corrupt) or no run is found.
    plot_inputs : bool, default True
        Read every run's ``history.csv`` and the median runs' ``recon.npz`` for the plots
        (:mod:`.plot_inputs`); False when no plot will be drawn (faster).
    reps, seed : int
        Bootstrap resamples and RNG seed (defaults 2000 and 0).
    """
    dirs = [Path(d) for d in sweep_dirs]
    rule = rule or dec.load_rule()
    collected = collect(dirs)
    if require_complete and (why := unfinished_text(collected.runs)):
        raise IncompleteSweepError(why)
    runs = tag_stages(collected, rule)
    summary, roles = summarize(runs, collected.arm_columns, collected.metric_names, rule,
                               control, reps=reps, seed=seed)
    protocols = arm_protocols(runs)
    decision = dec.decide(summary.to_dict("records"), rule, control, protocols, resolved=roles,
                          runs=runs.to_dict("records"))
    keys = summary[["sweep", "arm_id"]].itertuples(index=False, name=None)
    role_of = dict(zip(keys, summary["role"], strict=True))
    run_keys = runs[["sweep", "arm_id"]].itertuples(index=False, name=None)
    runs.insert(2, "role", [role_of.get(k, "") for k in run_keys])
    return StudyResult(
        sweep_dirs=dirs, rule=rule, control=control, runs=runs, summary=summary, roles=roles,
        decision=decision, protocols=protocols,
        warnings=caveats.warnings_for(runs, summary, collected.problems, rule),
        metric_names=collected.metric_names, arm_columns=collected.arm_columns,
        drift=activation_drift.load_drift(activation_drift.drift_runs(runs)),
        clip=clipsweep.clip_numbers(runs, summary, protocols, rule.metric),
        plot_inputs=load_plot_inputs(runs, summary, rule.metric) if plot_inputs else None,
        reps=reps, seed=seed, staged_by_depth=staged_by_depth(runs, rule),
        outside=sorted(runs.loc[runs["stage"] == OUTSIDE, "sweep"].unique()) if len(runs)
        else [])


def tag_stages(collected: Collected, rule: DecisionRule) -> pd.DataFrame:
    """Add the ``stage`` column (``A``/``B``/``clip``/``outside``/``""``) after ``sweep``: a
    sweep whose manifests declare it outside the study (``outside_study``) is in no stage."""
    runs = collected.runs.copy()
    n = len(runs)
    depth = runs["depth"] if "depth" in runs else [None] * n
    outside = runs["outside_study"].map(lambda v: v is True) if "outside_study" in runs \
        else [False] * n
    sweep_outside = {s for s, o in zip(runs["sweep"], outside, strict=True) if o}
    stage = [stage_of(s, d, rule, outside=s in sweep_outside)
             for s, d in zip(runs["sweep"], depth, strict=True)]
    runs.insert(1, "stage", stage)
    return runs


def staged_by_depth(runs: pd.DataFrame, rule: DecisionRule) -> list[str]:
    """``"<sweep> -> Stage A (depth 4)"`` for each sweep whose stage came from the depth
    fallback (no stage's name in it): the report says so."""
    if runs.empty:
        return []
    out = []
    for sweep, stage in sorted(set(zip(runs["sweep"], runs["stage"], strict=True))):
        if stage in STAGES and by_depth(sweep, rule):
            out.append(f"`{sweep}` -> Stage {stage} (depth {rule.stages[stage].depth})")
    return out


def default_out_dir(sweep_dirs: list[Path]) -> Path:
    """The sweep folder itself; for several, ``<parent of the first>/report_<a>+<b>``."""
    if len(sweep_dirs) == 1:
        return sweep_dirs[0]
    return sweep_dirs[0].parent / ("report_" + "+".join(d.name for d in sweep_dirs))


class IncompleteSweepError(RuntimeError):
    """Raised by ``aggregate(require_complete=True)`` when a planned run is unfinished."""


def unfinished_text(runs: pd.DataFrame) -> str | None:
    """``"k of n planned runs unfinished: ..."``, or None when every run has a final status."""
    if runs.empty:
        return "no runs found"
    bad = runs[runs["category"] == "not final"]
    if bad.empty:
        return None
    kinds = ", ".join(f"{n} {s}" for s, n in sorted(bad["status"].value_counts().items()))
    return f"{len(bad)} of {len(runs)} planned runs unfinished: {kinds}"


def arm_protocols(runs: pd.DataFrame) -> dict[tuple[str, str, str], protocol.ArmProtocol]:
    """``(stage, sweep, arm_id) ->`` the arm's protocol from every manifest of its runs
    (:func:`ptychostab.analysis.protocol.arm_protocol`: seeds under other protocols, and runs
    with records but no readable manifest, are kept apart)."""
    if runs.empty:
        return {}
    entries: dict[tuple[str, str, str], list] = {}
    for key, seed, proto, status, started in zip(
            runs[["stage", "sweep", "arm_id"]].itertuples(index=False, name=None),
            runs["seed"], runs["_protocol"], runs["status"], runs["started"], strict=True):
        has_records = status != "missing" or started is True
        entries.setdefault(tuple(str(k) for k in key), []).append(
            (int(seed), proto if isinstance(proto, dict) else None, has_records))
    return {k: protocol.arm_protocol(v) for k, v in entries.items()}
