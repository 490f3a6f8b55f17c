"""The report's figures (PNG, matplotlib Agg), drawn from data the analysis computed and read:
no function here reads a file (:mod:`ptychostab.report.figures` names the files and draws them).

One set per sweep, ``plots/<sweep>_<kind>.png``:

- ``val_loss``: val loss vs epoch, per arm the median over ok runs with the IQR band; failed
  runs as dotted lines up to their failure.
- ``grad_norm``: per arm, the median over runs of the per-epoch median grad norm before
  (solid) and after (dashed) clipping.
- ``failure_rate``: failure rate per arm with 95% Wilson whiskers.
- ``survival``: Kaplan-Meier survival vs epoch per arm.
- ``metrics``: box + strip plot per metric over ok runs.
- ``recon``: ground truth vs the median run's reconstruction (amplitude, phase), when the
  median run left a ``recon.npz`` (:mod:`ptychostab.analysis.plot_inputs`); skipped otherwise.

And for the whole study: ``clip_sweep`` (failure rate and median loss against the clip value),
``drift_epochs`` and ``drift_depth`` (activation drift against epoch and depth).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ptychostab.analysis import stats  # noqa: E402
from ptychostab.analysis.activation_drift import (  # noqa: E402
    DriftData,
    failure_epochs,
    level_drift,
)
from ptychostab.analysis.clipsweep import ClipNumbers  # noqa: E402
from ptychostab.analysis.plot_inputs import PlotInputs, Recon  # noqa: E402
from ptychostab.analysis.rule import ROLES  # noqa: E402
from ptychostab.runs import records  # noqa: E402

MAX_FAILED_LINES = 20  # per arm
DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path, tight: bool = True) -> Path:
    """Write and close; ``tight`` crops to the artists (an extra draw: legends outside)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path


def _legend(ax, n: int) -> None:
    if 0 < n <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def epoch_matrix(histories: list[list[dict]], column: str) -> np.ndarray:
    """Runs x epochs array of one history column (NaN where a run has no value)."""
    length = max((len(h) for h in histories), default=0)
    out = np.full((len(histories), length), np.nan)
    for i, rows in enumerate(histories):
        for j, row in enumerate(rows):
            out[i, j] = row.get(column, np.nan)
    return out


def band(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column (epoch) median, q25, q75 over rows, NaN where a column is empty."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanpercentile(matrix, [50.0, 25.0, 75.0], axis=0) if matrix.size else \
            np.empty((3, 0))
    return q[0], q[1], q[2]


def close_all() -> None:
    """Close every open figure (after a plot that failed half-way)."""
    plt.close("all")


def plot_curves(runs: pd.DataFrame, arms: pd.DataFrame, inputs: PlotInputs, loss_path: Path,
                grad_path: Path) -> list[Path]:
    """Val loss (median + IQR of ok runs, failed runs dotted) and grad norms vs epoch, from the
    runs' histories in ``inputs``."""
    fig_l, ax_l = plt.subplots(figsize=(7, 4.2))
    fig_g, ax_g = plt.subplots(figsize=(7, 4.2))
    for color, (_, arm) in zip(_colors(len(arms)), arms.iterrows(), strict=True):
        g = runs[(runs["sweep"] == arm["sweep"]) & (runs["arm_id"] == arm["arm_id"])]
        ok, failed = g[g["status"] == records.OK], g[g["category"] == "instability"]
        hist_ok = [inputs.history_of(p) for p in ok["_path"]]
        hist_failed = [inputs.history_of(p) for p in failed["_path"]]
        med, q25, q75 = band(epoch_matrix(hist_ok, "val_loss"))
        x = np.arange(med.size)
        ax_l.plot(x, med, color=color, label=f"{arm['arm_label']} ({len(ok)} ok)")
        ax_l.fill_between(x, q25, q75, color=color, alpha=0.2, linewidth=0)
        for rows in hist_failed[:MAX_FAILED_LINES]:
            y = [r.get("val_loss", np.nan) for r in rows]
            ax_l.plot(np.arange(len(y)), y, color=color, lw=0.6, alpha=0.5, ls=":")
        for col, ls in (("grad_norm_pre_median", "-"), ("grad_norm_post_median", "--")):
            m, _, _ = band(epoch_matrix(hist_ok + hist_failed, col))
            ax_g.plot(np.arange(m.size), m, color=color, ls=ls,
                      label=arm["arm_label"] if ls == "-" else None)
        peak = epoch_matrix(hist_ok + hist_failed, "grad_norm_pre_max")
        if peak.size and np.isfinite(peak).any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                top = np.nanmax(np.where(np.isfinite(peak), peak, np.nan), axis=0)
            ax_g.plot(np.arange(top.size), top, color=color, ls=":", lw=0.9)
    ax_l.set(xlabel="epoch", ylabel="val loss", yscale=_scale(ax_l),
             title="val loss: median and IQR of ok runs; dotted: failed runs")
    ax_g.set(xlabel="epoch", ylabel="grad norm", yscale=_scale(ax_g),
             title="grad norm pre-clip: median solid, max dotted; post-clip median dashed")
    _legend(ax_l, len(arms))
    _legend(ax_g, len(arms))
    return [_save(fig_l, loss_path), _save(fig_g, grad_path)]


def _scale(ax) -> str:
    """``log`` when the axes hold positive finite data, else ``linear`` (never raises)."""
    ys = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
    data = np.concatenate(ys) if ys else np.array([])
    return "log" if (np.isfinite(data) & (data > 0)).any() else "linear"


def plot_failure_rate(arms: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(arms) + 2), 3.6))
    x = np.arange(len(arms))
    rate = arms["failure_rate"].to_numpy(dtype=float)
    lo = np.clip(np.nan_to_num(rate - arms["failure_rate_lo"].to_numpy(dtype=float)), 0, 1)
    hi = np.clip(np.nan_to_num(arms["failure_rate_hi"].to_numpy(dtype=float) - rate), 0, 1)
    drawn = np.isfinite(rate)  # 0/0 is n/a: no bar, never 0%
    colors = _colors(len(arms))
    ax.bar(x[drawn], rate[drawn], color=[colors[i] for i in np.nonzero(drawn)[0]], alpha=0.8)
    ax.errorbar(x[drawn], rate[drawn], yerr=[lo[drawn], hi[drawn]], fmt="none", ecolor="k",
                capsize=4)
    for i, (_, r) in enumerate(arms.iterrows()):
        text = f"{r['n_instability']}/{r['n_done']}" if r["n_done"] else "0/0 n/a"
        ax.text(i, 1.02, text, ha="center", fontsize=7)
    ax.set_xticks(x, arms["arm_label"], rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.1), ylabel="instability / (ok + instability)",
           title="failure rate, 95% Wilson interval")
    return _save(fig, path)


def plot_survival(runs: pd.DataFrame, arms: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    step = 0.012  # vertical offset per arm: coinciding curves stay distinguishable
    for i, (color, (_, arm)) in enumerate(zip(_colors(len(arms)), arms.iterrows(),
                                              strict=True)):
        g = runs[(runs["sweep"] == arm["sweep"]) & (runs["arm_id"] == arm["arm_id"])]
        t_all = g["tte_epoch"].to_numpy(dtype=float)
        t, s = stats.kaplan_meier(t_all, g["event"].fillna(False).to_numpy(dtype=bool))
        end = np.nanmax(t_all) if np.isfinite(t_all).any() else 0.0
        xs = np.concatenate([[0.0], t, [max(end, t[-1] if t.size else 0.0)]])
        ys = np.concatenate([[1.0], s, [s[-1] if s.size else 1.0]])
        off = step * (i - (len(arms) - 1) / 2)
        ax.step(xs, ys + off, where="post", color=color, marker=MARKERS[i % len(MARKERS)],
                markevery=max(1, len(xs) - 1), label=f"{arm['arm_label']}")
    ax.set(xlabel="epoch", ylabel="fraction without instability", ylim=(-0.05, 1.08),
           title="Kaplan-Meier survival (other endings censored; curves offset slightly)")
    if len(arms):
        ax.legend(fontsize=7, loc="lower left", ncol=len(arms), frameon=False)
    return _save(fig, path)


def plot_metrics(runs: pd.DataFrame, arms: pd.DataFrame, metric_names: list[str],
                 path: Path) -> Path | None:
    if not metric_names:
        return None
    ncol = min(4, len(metric_names))
    nrow = math.ceil(len(metric_names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    for ax, m in zip(axes.ravel(), metric_names, strict=False):
        data = []
        for _, arm in arms.iterrows():
            g = runs[(runs["sweep"] == arm["sweep"]) & (runs["arm_id"] == arm["arm_id"])
                     & (runs["status"] == records.OK)]
            data.append(stats.finite(g[m].to_numpy(dtype=float)))
        ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.plot(i + rng.uniform(-0.15, 0.15, d.size), d, ".", ms=3, alpha=0.6)
        ax.set_xticks(range(1, len(arms) + 1), arms["arm_label"], rotation=30, ha="right",
                      fontsize=7)
        ax.set_title(m, fontsize=9)
    for ax in axes.ravel()[len(metric_names):]:
        ax.axis("off")
    fig.suptitle("metrics over ok runs", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.15, hspace=0.7, wspace=0.3)
    return _save(fig, path, tight=False)


def plot_recon(arms: pd.DataFrame, recon: dict[tuple[str, str], Recon],
               path: Path) -> Path | None:
    """Ground truth and each arm's median-run reconstruction (``recon``: (sweep, arm_id) ->
    :class:`~ptychostab.analysis.plot_inputs.Recon`); None when no arm has one."""
    found = []
    for _, arm in arms.iterrows():
        rec = recon.get((str(arm["sweep"]), str(arm["arm_id"])))
        if rec is not None:
            found.append((f"{arm['arm_label']} (seed {rec.seed})", rec))
    if not found:
        return None
    truth = found[0][1].truth
    panels = [("ground truth", truth)] + [(name, rec.pred) for name, rec in found]
    amp_range = np.percentile(np.abs(truth), [1.0, 99.0])  # one amplitude scale for all
    fig, axes = plt.subplots(len(panels), 2, figsize=(6.4, 3.0 * len(panels)), squeeze=False)
    for row, (name, obj) in zip(axes, panels, strict=True):
        parts = (("amplitude", np.abs(obj), "gray", amp_range),
                 ("phase", np.angle(obj), "twilight", (-np.pi, np.pi)))
        for ax, (part, img, cmap, (vmin, vmax)) in zip(row, parts, strict=True):
            im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{name}: {part}", fontsize=8)
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, tight=False)


def plot_clip_sweep(clip: ClipNumbers | None, metric: str, path: Path) -> Path | None:
    """Failure rate and median ``metric`` (with their intervals) against the clip value on a
    log axis; the unclipped Stage A control as the right-most point."""
    if clip is None or clip.arms.empty:
        return None
    arms, ctrl = clip.arms, clip.control
    x = pd.to_numeric(arms["clip_value"], errors="coerce").to_numpy(dtype=float)
    rows = [r for _, r in arms.iterrows()]
    labels = [f"{v:g}" for v in x]
    if ctrl is not None:
        x = np.append(x, np.nanmax(x) * 3 if np.isfinite(x).any() else 1.0)
        rows.append(ctrl)
        labels.append("none")
    m = metric
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for xi, r in zip(x, rows, strict=True):
        color = "C3" if r is ctrl else "C0"
        if r["n_done"]:
            rate = float(r["failure_rate"])
            a1.errorbar([xi], [rate], yerr=[[rate - r["failure_rate_lo"]],
                                            [r["failure_rate_hi"] - rate]], fmt="o",
                        color=color, capsize=3)
        med = float(r.get(f"{m}_median", np.nan))
        if np.isfinite(med):
            lo, hi = r.get(f"{m}_os_lo", np.nan), r.get(f"{m}_os_hi", np.nan)
            err = [[med - lo], [hi - med]] if np.isfinite(lo) else None
            a2.errorbar([xi], [med], yerr=err, fmt="s", color=color, capsize=3)
    for ax, title in ((a1, "failure rate (95% Wilson)"),
                      (a2, f"median {m} (order-statistic interval)")):
        ax.set_xscale("log")
        ax.set_xticks(x, labels, fontsize=7)
        ax.minorticks_off()
        ax.set(xlabel="clip value (none: Stage A control)", title=title)
    a1.set_ylim(-0.05, 1.05)
    return _save(fig, path)


def plot_drift_epochs(data: DriftData, path: Path) -> Path | None:
    """Per stage and arm: level drift against epoch of the runs that did not fail (median,
    IQR) and of the failed runs, aligned on their failure epoch; None without activations."""
    runs, lv = data.runs, level_drift(data.acts)
    groups = [(k, g) for k, g in runs.groupby(["stage", "arm"], sort=False)
              if set(g["run"]) & set(lv["run"])]
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 2.8 * len(groups)), squeeze=False,
                             constrained_layout=True)
    for (stage, arm), g, row in ((k, g, axes[i]) for i, (k, g) in enumerate(groups)):
        failed = failure_epochs(g)
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
    return _save(fig, path, tight=False)


def plot_drift_depth(data: DriftData, path: Path) -> Path | None:
    """Per arm (its role when it has one, across stages): each block's signed mean at init and
    at the end, one line per depth; None without activations."""
    runs, acts = data.runs, data.acts
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
    return _save(fig, path, tight=False)
