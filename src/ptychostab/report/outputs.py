"""Write a study's outputs: ``runs.csv``, ``summary.csv``, ``report.md`` and ``plots/``.

The second half of ``compute -> write``: :func:`ptychostab.analysis.pipeline.aggregate`
computes a :class:`~ptychostab.analysis.pipeline.StudyResult` and writes nothing;
:func:`write_outputs` draws its figures (:mod:`.figures`), renders the report (:mod:`.render`)
and writes the files, ``report.md`` atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from ptychostab.analysis.pipeline import StudyResult, default_out_dir
from ptychostab.report.figures import PLOTS_DIR, Figures, draw
from ptychostab.report.render import render
from ptychostab.runs import records

RUNS_CSV = "runs.csv"
SUMMARY_CSV = "summary.csv"
REPORT_MD = "report.md"
#: columns of the runs table for the analysis only (absolute folder, parsed protocol)
INTERNAL_COLUMNS = ("_path", "_protocol")


def write_outputs(result: StudyResult, out_dir: str | os.PathLike | None = None,
                  plots: bool = True) -> list[Path]:
    """Write the study's outputs into ``out_dir`` and return the files written.

    Parameters
    ----------
    result : StudyResult
        From :func:`~ptychostab.analysis.pipeline.aggregate` (with ``plot_inputs=True`` when
        ``plots``).
    out_dir : path, optional
        Default :func:`~ptychostab.analysis.pipeline.default_out_dir` of the result's sweeps.
    plots : bool, default True
        Draw ``plots/*.png`` (matplotlib, Agg backend).
    """
    out = Path(out_dir) if out_dir else default_out_dir(result.sweep_dirs)
    figures = draw(result, out / PLOTS_DIR) if plots else Figures()
    text = render(result, out, figures)
    out.mkdir(parents=True, exist_ok=True)
    result.runs.drop(columns=list(INTERNAL_COLUMNS)).to_csv(out / RUNS_CSV, index=False)
    result.summary.to_csv(out / SUMMARY_CSV, index=False)
    records.atomic_write_text(out / REPORT_MD, text)
    return [out / RUNS_CSV, out / SUMMARY_CSV, out / REPORT_MD, *figures.files]
