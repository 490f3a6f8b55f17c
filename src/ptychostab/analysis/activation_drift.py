"""The hypothesis in the report: activation drift per arm and stage, against epoch and depth.

Reads each run's ``activations.csv`` (written by :mod:`ptychostab.diagnostics.drift`; columns
``epoch, block, name, level, resolution, channels, out_mean, ...``; epoch -1 = initialisation)
and nothing else of training. Definitions, stated in the report as well:

- *level drift* of a run at an epoch: the signed mean of the output of the **last block of a
  level** (where the residual stream has accumulated that level's updates);
- *drift* ``D``: the largest level drift of the run at that epoch (the most drifted level);
- *before failure*: the :data:`PRE_FAILURE_EPOCHS` last recorded epochs before a run's failure
  epoch (failed = an instability status), against the same epochs of the runs of that arm and
  stage that survived (status ``ok``).

Every number the reading quotes comes from :func:`reading_numbers`; a comparison the data cannot
make is "not measurable", never a guess.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ptychostab.report.tables import relative_path
from ptychostab.runs import records
from ptychostab.runs.records import ACTIVATIONS

PRE_FAILURE_EPOCHS = 5
ARCH_FIX_ROLE = "arch_fix"
CONTROL_ROLE = "control"
ROLES = ("control", "arch_fix", "opt_fix")

__all__ = ["ACTIVATIONS", "PRE_FAILURE_EPOCHS", "drift_series", "drift_section",
           "load_activations", "reading_numbers"]


def load_activations(run_dirs: dict[str, Path]) -> pd.DataFrame:
    """All runs' rows, with a ``run`` column (the key of ``run_dirs``); empty if none exist."""
    frames = []
    for key, run_dir in run_dirs.items():
        path = Path(run_dir) / ACTIVATIONS
        if not path.exists():
            continue
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        need = {"epoch", "block", "level", "out_mean"}
        if df.empty or not need <= set(df.columns):
            continue
        df = df.dropna(subset=["epoch", "block", "level"])
        df["run"] = key
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def level_drift(acts: pd.DataFrame) -> pd.DataFrame:
    """Per run, epoch and level: the last block's signed mean (``run, epoch, level, drift``)."""
    if acts.empty:
        return pd.DataFrame(columns=["run", "epoch", "level", "drift"])
    last = acts.sort_values("block").groupby(["run", "epoch", "level"], as_index=False).last()
    return last[["run", "epoch", "level", "out_mean"]].rename(columns={"out_mean": "drift"})


def drift_series(acts: pd.DataFrame) -> pd.DataFrame:
    """Per run and epoch: ``D`` = the largest level drift (``run, epoch, D``)."""
    lv = level_drift(acts)
    if lv.empty:
        return pd.DataFrame(columns=["run", "epoch", "D"])
    return lv.groupby(["run", "epoch"], as_index=False)["drift"].max().rename(
        columns={"drift": "D"})


def _median(values) -> float:
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def _pre_failure(series: pd.DataFrame, failed: dict[str, int], survived: list[str]
                 ) -> tuple[float, float, int, int]:
    """Median D over the last epochs before each failure, and over the same epochs of the
    survivors; with the run counts behind each."""
    fail_vals, surv_vals, n_f = [], [], 0
    for run, f_epoch in failed.items():
        window = [e for e in range(f_epoch - PRE_FAILURE_EPOCHS, f_epoch) if e >= 0]
        s = series[(series["run"] == run) & series["epoch"].isin(window)]
        if s.empty:
            continue
        n_f += 1
        fail_vals += s["D"].tolist()
        t = series[series["run"].isin(survived) & series["epoch"].isin(window)]
        surv_vals += t["D"].tolist()
    n_s = int(series[series["run"].isin(survived)]["run"].nunique()) if surv_vals else 0
    return _median(fail_vals), _median(surv_vals), n_f, n_s


def reading_numbers(runs: pd.DataFrame, acts: pd.DataFrame) -> dict:
    """The numbers behind the plain reading, per (stage, arm role or label).

    ``runs`` needs ``run``, ``status``, ``failure_epoch``, ``stage``, ``arm``, ``role`` and
    ``depth`` columns. Returns ``{(stage, arm): {...}}`` with ``D_init``, ``D_end`` (medians over
    seeds of D at epoch -1 and at each run's last recorded epoch), ``depth``, ``n_runs``,
    ``update_abs_init`` / ``update_abs_end`` (median over seeds of the mean |update| over blocks),
    and the pre-failure comparison ``pre_fail``, ``pre_survived``, ``n_failed``,
    ``n_survived``.
    """
    series = drift_series(acts)
    out: dict = {}
    if series.empty:
        return out
    upd = (acts.groupby(["run", "epoch"], as_index=False)["update_abs_mean"].mean()
           if "update_abs_mean" in acts else pd.DataFrame(columns=["run", "epoch",
                                                                   "update_abs_mean"]))
    for (stage, arm), g in runs.groupby(["stage", "arm"], sort=False):
        have = [r for r in g["run"] if r in set(series["run"])]
        if not have:
            continue
        s = series[series["run"].isin(have)]
        last_epoch = s.groupby("run")["epoch"].transform("max")
        u = upd[upd["run"].isin(have)]
        u_last = u.groupby("run")["epoch"].transform("max") if not u.empty else None
        failed = {r: int(e) for r, st, e in _triples(g)
                  if records.is_instability(st) and r in have and _finite(e)}
        survived = [r for r, st, _ in _triples(g) if st == records.OK and r in have]
        pre_f, pre_s, n_f, n_s = _pre_failure(series, failed, survived)
        out[(stage, arm)] = {
            "role": g["role"].iloc[0], "depth": _first_finite(g["depth"]), "n_runs": len(have),
            "D_init": _median(s[s["epoch"] == -1]["D"]),
            "D_end": _median(s[s["epoch"] == last_epoch]["D"]),
            "update_abs_init": _median(u[u["epoch"] == -1]["update_abs_mean"])
            if not u.empty else math.nan,
            "update_abs_end": _median(u[u["epoch"] == u_last]["update_abs_mean"])
            if not u.empty else math.nan,
            "pre_fail": pre_f, "pre_survived": pre_s, "n_failed": n_f, "n_survived": n_s,
            "n_failed_total": len(failed),
        }
    return out


def _triples(g: pd.DataFrame):
    """``(run, status, failure_epoch)`` per run of a group."""
    return zip(g["run"], g["status"], g["failure_epoch"], strict=True)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _first_finite(values):
    for v in values:
        if _finite(v):
            return int(float(v))
    return None


def _f(x: float, signed: bool = True) -> str:
    if not _finite(x):
        return "not measurable"
    return f"{x:+.3g}" if signed else f"{x:.3g}"


def reading_lines(numbers: dict) -> list[str]:
    """The plain reading: numbers, not adjectives; "not measurable" where the data cannot say."""
    lines: list[str] = []
    controls = {k: v for k, v in numbers.items() if v["role"] == CONTROL_ROLE}
    fixes = {k: v for k, v in numbers.items() if v["role"] == ARCH_FIX_ROLE}
    by_depth = sorted(controls.values(), key=lambda v: v["depth"] or 0)
    if len({v["depth"] for v in by_depth}) >= 2:
        parts = [f"depth {v['depth']}: D at init {_f(v['D_init'])}, at the end {_f(v['D_end'])}"
                 for v in by_depth]
        lines.append("- Control, drift against depth (median over seeds): " + "; ".join(parts)
                     + ".")
    elif by_depth:
        lines.append("- Control, drift against depth: not measurable (the control ran at one "
                     "depth only).")
    else:
        lines.append("- Control: not measurable (no control run recorded activations).")
    for (stage, _arm), v in controls.items():
        grow = v["D_end"] - v["D_init"] if _finite(v["D_end"]) and _finite(v["D_init"]) else None
        lines.append(f"- Control, stage {stage}, drift against epochs: D {_f(v['D_init'])} at "
                     f"init -> {_f(v['D_end'])} at the last epoch (change "
                     f"{_f(grow) if grow is not None else 'not measurable'}).")
    for (stage, arm), v in numbers.items():
        if v["n_failed_total"] == 0:
            what = "not measurable (no instability failure)"
        elif v["n_failed"] == 0:
            what = "not measurable (the failed runs recorded no epoch before their failure)"
        elif v["n_survived"] == 0:
            what = (f"median D {_f(v['pre_fail'])} over the {PRE_FAILURE_EPOCHS} epochs before "
                    f"failure ({v['n_failed']} failed runs); no surviving run to compare: "
                    "not measurable")
        else:
            what = (f"median D {_f(v['pre_fail'])} in the {PRE_FAILURE_EPOCHS} epochs before "
                    f"failure ({v['n_failed']} failed runs) vs {_f(v['pre_survived'])} in the "
                    f"same epochs of {v['n_survived']} surviving runs")
        lines.append(f"- Stage {stage}, {arm}: drift before failure: {what}.")
    for (stage, arm), v in fixes.items():
        ctrl = next((c for (s, _a), c in controls.items() if s == stage), None)
        ctrl_txt = (f"; control {_f(ctrl['D_end'])}, mean |update| "
                    f"{_f(ctrl['update_abs_end'], signed=False)}" if ctrl else
                    "; no control in this stage to compare")
        lines.append(f"- Stage {stage}, {arm} (stable_hybrid): D at the end {_f(v['D_end'])}, "
                     f"mean |update| over blocks {_f(v['update_abs_init'], signed=False)} at "
                     f"init -> {_f(v['update_abs_end'], signed=False)} at the end{ctrl_txt}.")
    if not fixes:
        lines.append("- stable_hybrid: not measurable (no arch-fix run recorded activations).")
    return lines


# --- plots ---------------------------------------------------------------------------------
def _plot_trajectories(runs: pd.DataFrame, acts: pd.DataFrame, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = level_drift(acts)
    groups = [(k, g) for k, g in runs.groupby(["stage", "arm"], sort=False)
              if set(g["run"]) & set(lv["run"])]
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 2.8 * len(groups)), squeeze=False,
                             constrained_layout=True)
    for (stage, arm), g, row in ((k, g, axes[i]) for i, (k, g) in enumerate(groups)):
        failed = {r: int(e) for r, st, e in _triples(g)
                  if records.is_instability(st) and _finite(e)}
        rest = [r for r in g["run"] if r not in failed]
        for level, gl in lv[lv["run"].isin(rest)].groupby("level"):
            piv = gl.pivot_table(index="epoch", columns="run", values="drift")
            q = np.nanpercentile(piv.to_numpy(), [25, 50, 75], axis=1)
            row[0].plot(piv.index, q[1], marker="o", ms=3, label=f"level {level}")
            row[0].fill_between(piv.index, q[0], q[2], alpha=0.2)
        for run, f_epoch in failed.items():
            for level, gl in lv[lv["run"] == run].groupby("level"):
                row[1].plot(gl["epoch"] - f_epoch, gl["drift"], lw=0.8, marker=".",
                            color=f"C{int(level) % 10}", label=f"level {level}")
        row[0].set_title(f"stage {stage}, {arm}: not failed (median, IQR)", fontsize=9)
        row[1].set_title(f"stage {stage}, {arm}: failed runs, aligned on failure", fontsize=9)
        row[0].set_xlabel("epoch (-1 = init)")
        row[1].set_xlabel("epochs relative to the failure epoch")
        for ax in row:
            ax.axhline(0, color="0.6", lw=0.7)
            ax.set_ylabel("last-block signed mean")
            handles, labels = ax.get_legend_handles_labels()
            uniq = dict(zip(labels, handles, strict=False))
            if uniq:
                ax.legend(uniq.values(), uniq.keys(), fontsize=7)
            else:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_depth(runs: pd.DataFrame, acts: pd.DataFrame, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if acts.empty:
        return None
    # one panel per arm across stages: the role when it has one (control at depth 4 and 8 are
    # one arm of the study), else the arm's label
    panel = runs["role"].where(runs["role"].isin(ROLES), runs["arm"])
    arms = [a for a in dict.fromkeys(panel) if set(runs[panel == a]["run"]) & set(acts["run"])]
    if not arms:
        return None
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.2), squeeze=False,
                             constrained_layout=True)
    for ax, arm in zip(axes[0], arms, strict=False):
        g = runs[panel == arm]
        for i, (depth, gd) in enumerate(sorted(g.groupby("depth"), key=lambda t: t[0])):
            a = acts[acts["run"].isin(gd["run"])]
            if a.empty:
                continue
            last = a.groupby("run")["epoch"].transform("max")
            for when, sel, style in (("init", a["epoch"] == -1, "--"), ("end", a["epoch"] == last,
                                                                         "-")):
                med = a[sel].groupby("block")["out_mean"].median()
                if not med.empty:
                    ax.plot(med.index, med.to_numpy(), style, marker="o", ms=3, color=f"C{i}",
                            label=f"depth {int(depth)} {when}")
        ax.axhline(0, color="0.6", lw=0.7)
        ax.set_title(str(arm), fontsize=9)
        ax.set_xlabel("block (execution order)")
        ax.set_ylabel("signed mean (median over seeds)")
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def drift_section(runs: pd.DataFrame, *, report_dir: Path, plots_dir: Path,
                  plots: bool = True) -> list[str]:
    """Markdown lines of the report's drift section (always a heading; a note without data).

    ``runs``: one row per run with ``run_dir``, ``status``, ``failure_epoch``, ``stage``,
    ``arm`` (the arm's label), ``role`` (control / arch_fix / opt_fix / other) and ``depth``.
    """
    lines = ["## Activation drift (the hypothesis)", ""]
    runs = runs.copy()
    # a planned run with no folder has no path (NaN): it has no activations either
    runs["run"] = [str(x) if isinstance(x, (str, Path)) and str(x) else f"<no folder {i}>"
                   for i, x in enumerate(runs["run_dir"])]
    acts = load_activations({r: Path(r) for r in runs["run"] if not r.startswith("<no folder")})
    if acts.empty:
        return lines + ["No run of these sweeps recorded `activations.csv` "
                        "(`diagnostics.every_n_epochs=0`, or runs older than the probe): the "
                        "drift sections are left out.", ""]
    lines += [f"Drift D = the largest, over resolution levels, signed mean of the output of a "
              f"level's last residual block, on the fixed probe batch (epoch -1 = "
              f"initialisation). Before failure = the {PRE_FAILURE_EPOCHS} epochs before an "
              "instability failure; survived = status ok.", ""]
    if plots:
        for name, fn in (("drift_epochs", _plot_trajectories), ("drift_depth", _plot_depth)):
            try:
                p = fn(runs, acts, plots_dir / f"{name}.png")
            except Exception as err:  # a plot must never cost the report
                lines.append(f"(plot {name} skipped: {type(err).__name__}: {err})")
                continue
            if p is not None:
                lines.append(f"![{name}]({relative_path(str(p), report_dir)})")
        lines.append("")
    lines += ["Reading:", ""] + reading_lines(reading_numbers(runs, acts)) + [""]
    return lines
