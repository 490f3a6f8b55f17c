"""The report's activation-drift section (the hypothesis), from
:class:`ptychostab.analysis.activation_drift.DriftData` and the figures drawn for it.

The plain reading quotes numbers, not adjectives (:func:`reading_lines`); a comparison the data
cannot make is "not measurable", never a guess.
"""

from __future__ import annotations

from pathlib import Path

from ptychostab.analysis.activation_drift import PRE_FAILURE_EPOCHS, DriftData, finite_number
from ptychostab.report.figures import Drawn
from ptychostab.report.markdown import image, relative_path


def _f(x: float, signed: bool = True) -> str:
    if not finite_number(x):
        return "not measurable"
    return f"{x:+.3g}" if signed else f"{x:.3g}"


def reading_lines(numbers: dict) -> list[str]:
    """The plain reading: numbers, not adjectives; "not measurable" where the data cannot say."""
    lines: list[str] = []
    controls = {k: v for k, v in numbers.items() if v["role"] == "control"}
    fixes = {k: v for k, v in numbers.items() if v["role"] == "arch_fix"}
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
        grow = (v["D_end"] - v["D_init"]
                if finite_number(v["D_end"]) and finite_number(v["D_init"]) else None)
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


def drift_section(data: DriftData, figures: list[Drawn] | None = None,
                  report_dir: Path | None = None) -> list[str]:
    """Markdown lines of the section (always a heading; a note without data). ``figures``: the
    section's figures (:func:`ptychostab.report.figures.draw_drift`; None: none drawn), linked
    relative to ``report_dir``."""
    lines = ["## Activation drift (the hypothesis)", ""]
    if data.acts.empty:
        return lines + ["No run of these sweeps recorded `activations.csv` "
                        "(`diagnostics.every_n_epochs=0`, or runs older than the probe): the "
                        "drift sections are left out.", ""]
    lines += [f"Drift D = the largest, over resolution levels, signed mean of the output of a "
              f"level's last residual block, on the fixed probe batch (epoch -1 = "
              f"initialisation). Before failure = the {PRE_FAILURE_EPOCHS} epochs before an "
              "instability failure; survived = status ok.", ""]
    if figures is not None:
        for fig in figures:
            if fig.error is not None:
                lines.append(f"(plot {fig.name} skipped: {fig.error})")
            elif fig.path is not None:
                lines.append(image(fig.name, relative_path(str(fig.path), report_dir)))
        lines.append("")
    return lines + ["Reading:", ""] + reading_lines(data.numbers) + [""]
