"""Which figures a report has, where their files go, and drawing them from a study result.

:func:`draw` gives every figure its file under ``plots/`` and draws it with
:mod:`ptychostab.report.plots` (matplotlib is imported only here, when figures are asked for);
a figure that cannot be drawn is skipped with a note, never a crash: a report must be written
whatever the data. :class:`Figures` is what :func:`ptychostab.report.render.render` links.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptychostab.analysis.activation_drift import DriftData
    from ptychostab.analysis.pipeline import StudyResult

PLOTS_DIR = "plots"  # under the report's folder
CLIP_SWEEP_PNG = "clip_sweep.png"
DRIFT_PLOTS = ("drift_epochs", "drift_depth")  # the drift section's figures (<name>.png)
#: per sweep: ``<sweep>_<kind>.png``
SWEEP_KINDS = ("val_loss", "grad_norm", "failure_rate", "survival", "metrics", "recon")


@dataclass(frozen=True)
class Drawn:
    """One figure of the drift section: its file, or why it was skipped (neither: no data)."""

    name: str
    path: Path | None = None
    error: str | None = None


@dataclass
class Figures:
    """The figures drawn for one report."""

    study: list[Path] = field(default_factory=list)  # per-sweep figures and the clip sweep's
    notes: list[str] = field(default_factory=list)  # study figures skipped: "<what>: <why>"
    drift: list[Drawn] | None = None  # the drift section's figures; None: none asked for

    @property
    def files(self) -> list[Path]:
        """Every file written, in drawing order."""
        return [*self.study, *(d.path for d in self.drift or [] if d.path is not None)]


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def _safe(notes: list[str], name: str, fn, *args) -> list[Path]:
    """Draw one figure; one that cannot be drawn is skipped with a note."""
    from ptychostab.report import plots

    try:
        out = fn(*args)
    except Exception as err:  # noqa: BLE001  (a report must be written whatever the data)
        plots.close_all()
        notes.append(f"{name}: {_error(err)}")
        return []
    out = out if isinstance(out, list) else [out]
    return [p for p in out if p is not None]


def sweep_file_stem(sweep: str) -> str:
    """A sweep name made safe as the start of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(sweep))


def draw_study(result: StudyResult, plots_dir: Path) -> tuple[list[Path], list[str]]:
    """Every per-sweep figure and the clip sweep's: (files written, figures skipped)."""
    from ptychostab.report import plots

    if result.plot_inputs is None:
        raise ValueError("the study was aggregated with plot_inputs=False: its histories and "
                         "reconstructions were not read, so its figures cannot be drawn")
    runs, inputs = result.runs, result.plot_inputs
    files: list[Path] = []
    notes: list[str] = []
    for sweep_name, arms in result.summary.groupby("sweep", sort=False):
        sweep = sweep_file_stem(sweep_name)
        path = {k: Path(plots_dir) / f"{sweep}_{k}.png" for k in SWEEP_KINDS}
        files += _safe(notes, f"{sweep} curves", plots.plot_curves, runs, arms, inputs,
                       path["val_loss"], path["grad_norm"])
        files += _safe(notes, f"{sweep} failure rate", plots.plot_failure_rate, arms,
                       path["failure_rate"])
        files += _safe(notes, f"{sweep} survival", plots.plot_survival, runs, arms,
                       path["survival"])
        files += _safe(notes, f"{sweep} metrics", plots.plot_metrics, runs, arms,
                       result.metric_names, path["metrics"])
        files += _safe(notes, f"{sweep} recon", plots.plot_recon, arms, inputs.recon,
                       path["recon"])
    files += _safe(notes, "clip sweep", plots.plot_clip_sweep, result.clip, result.rule.metric,
                   Path(plots_dir) / CLIP_SWEEP_PNG)
    return files, notes


def draw_drift(drift: DriftData, plots_dir: Path) -> list[Drawn]:
    """The drift section's figures ([] when no run recorded activations)."""
    from ptychostab.report import plots

    if drift.acts.empty:
        return []
    out = []
    for name, fn in zip(DRIFT_PLOTS, (plots.plot_drift_epochs, plots.plot_drift_depth),
                        strict=True):
        try:
            out.append(Drawn(name, path=fn(drift, Path(plots_dir) / f"{name}.png")))
        except Exception as err:  # noqa: BLE001  (a plot must never cost the report)
            plots.close_all()
            out.append(Drawn(name, error=_error(err)))
    return out


def draw(result: StudyResult, plots_dir: Path) -> Figures:
    """Every figure of the report, written under ``plots_dir``."""
    study, notes = draw_study(result, plots_dir)
    return Figures(study, notes, draw_drift(result.drift, plots_dir))
