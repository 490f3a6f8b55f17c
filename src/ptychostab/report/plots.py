"""Study plots (PNG, matplotlib Agg), one set per sweep: ``plots/<sweep>_<kind>.png``.

- ``val_loss``: val loss vs epoch, per arm the median over ok runs with the IQR band; failed
  runs as dotted lines up to their failure.
- ``grad_norm``: per arm, the median over runs of the per-epoch median grad norm before
  (solid) and after (dashed) clipping.
- ``failure_rate``: failure rate per arm with 95% Wilson whiskers.
- ``survival``: Kaplan-Meier survival vs epoch per arm.
- ``metrics``: box + strip plot per metric over ok runs.
- ``recon``: ground truth vs the median run's reconstruction (amplitude, phase), from an
  optional ``recon.npz`` (keys ``pred``, ``truth``) in the run folder; skipped when absent.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ptychostab.analysis import stats  # noqa: E402
from ptychostab.analysis.collect import load_history  # noqa: E402
from ptychostab.analysis.decide import DecisionRule  # noqa: E402
from ptychostab.runs import records  # noqa: E402

RECON = "recon.npz"
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


def _histories(g: pd.DataFrame) -> list[list[dict]]:
    return [load_history(p) for p in g["_path"]]


def plot_curves(runs: pd.DataFrame, arms: pd.DataFrame, loss_path: Path,
                grad_path: Path) -> list[Path]:
    """Val loss (median + IQR of ok runs, failed runs dotted) and grad norms vs epoch."""
    fig_l, ax_l = plt.subplots(figsize=(7, 4.2))
    fig_g, ax_g = plt.subplots(figsize=(7, 4.2))
    for color, (_, arm) in zip(_colors(len(arms)), arms.iterrows(), strict=True):
        g = runs[(runs["sweep"] == arm["sweep"]) & (runs["arm_id"] == arm["arm_id"])]
        ok, failed = g[g["status"] == records.OK], g[g["category"] == "instability"]
        hist_ok, hist_failed = _histories(ok), _histories(failed)
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


def median_run(g: pd.DataFrame, metric: str) -> pd.Series | None:
    """The ok run whose ``metric`` is the median (the lower middle for an even count)."""
    ok = g[(g["status"] == records.OK) & np.isfinite(g[metric].to_numpy(dtype=float))] \
        if metric in g else g.iloc[0:0]
    if ok.empty:
        return None
    ordered = ok.sort_values([metric, "seed"], kind="stable")
    return ordered.iloc[(len(ordered) - 1) // 2]


def load_recon(run_path: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(pred, truth) complex 2-D arrays from ``recon.npz``; None when absent or unreadable."""
    if not isinstance(run_path, str) or not (Path(run_path) / RECON).exists():
        return None
    try:
        with np.load(Path(run_path) / RECON, allow_pickle=False) as z:
            pred, truth = np.asarray(z["pred"]), np.asarray(z["truth"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # an optional artefact: damaged means skipped, never a crash
    return (pred, truth) if pred.ndim == 2 and truth.ndim == 2 else None


def plot_recon(runs: pd.DataFrame, arms: pd.DataFrame, rule: DecisionRule,
               path: Path) -> Path | None:
    found = []
    for _, arm in arms.iterrows():
        g = runs[(runs["sweep"] == arm["sweep"]) & (runs["arm_id"] == arm["arm_id"])]
        run = median_run(g, rule.metric)
        rec = load_recon(run["_path"]) if run is not None else None
        if rec is not None:
            found.append((f"{arm['arm_label']} (seed {run['seed']})", rec))
    if not found:
        return None
    truth = found[0][1][1]
    panels = [("ground truth", truth)] + [(name, rec[0]) for name, rec in found]
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


def plot_clip_sweep(summary: pd.DataFrame, rule: DecisionRule, path: Path) -> Path | None:
    """Failure rate and median loss (with their intervals) against the clip value on a log
    axis; the unclipped Stage A control as the right-most point."""
    from ptychostab.analysis import clipsweep

    arms = clipsweep.clip_arms(summary)
    if arms.empty:
        return None
    x = pd.to_numeric(arms["clip_value"], errors="coerce").to_numpy(dtype=float)
    ctrl = clipsweep.stage_a_control(summary)
    rows = [r for _, r in arms.iterrows()]
    labels = [f"{v:g}" for v in x]
    if ctrl is not None:
        x = np.append(x, np.nanmax(x) * 3 if np.isfinite(x).any() else 1.0)
        rows.append(ctrl)
        labels.append("none")
    m = rule.metric
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


def _safe(notes: list[str], name: str, fn, *args) -> list[Path]:
    """Run one plot; a plot that cannot be drawn is skipped with a note, never a crash."""
    try:
        out = fn(*args)
    except Exception as err:  # noqa: BLE001  (a report must be written whatever the data)
        plt.close("all")
        notes.append(f"{name}: {type(err).__name__}: {err}")
        return []
    out = out if isinstance(out, list) else [out]
    return [p for p in out if p is not None]


def make_plots(runs: pd.DataFrame, summary: pd.DataFrame, out_dir: Path,
               metric_names: list[str], rule: DecisionRule) -> tuple[list[Path], list[str]]:
    """Write every plot for every sweep; return the files written and the skipped plots."""
    files: list[Path] = []
    notes: list[str] = []
    for sweep_name, arms in summary.groupby("sweep", sort=False):
        sweep = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(sweep_name))
        stem = Path(out_dir) / sweep
        files += _safe(notes, f"{sweep} curves", plot_curves, runs, arms,
                       stem.with_name(f"{sweep}_val_loss.png"),
                       stem.with_name(f"{sweep}_grad_norm.png"))
        files += _safe(notes, f"{sweep} failure rate", plot_failure_rate, arms,
                       stem.with_name(f"{sweep}_failure_rate.png"))
        files += _safe(notes, f"{sweep} survival", plot_survival, runs, arms,
                       stem.with_name(f"{sweep}_survival.png"))
        files += _safe(notes, f"{sweep} metrics", plot_metrics, runs, arms, metric_names,
                       stem.with_name(f"{sweep}_metrics.png"))
        files += _safe(notes, f"{sweep} recon", plot_recon, runs, arms, rule,
                       stem.with_name(f"{sweep}_recon.png"))
    files += _safe(notes, "clip sweep", plot_clip_sweep, summary, rule,
                   Path(out_dir) / "clip_sweep.png")
    return files, notes
