"""The report's drift section, from hand-made activations.csv files."""

import math

import pandas as pd
import pytest

from ptychostab.analysis import activation_drift as drift
from ptychostab.report.drift_section import drift_section
from ptychostab.report.figures import draw_drift

COLUMNS = ["epoch", "block", "name", "level", "resolution", "channels", "out_mean",
           "out_abs_mean", "out_std", "update_mean", "update_abs_mean", "update_std",
           "gelu_saturated"]


def _write(run_dir, drift_of_epoch, epochs, n_levels=2, blocks_per_level=2, update=0.1):
    """A run whose last block of level l has signed mean drift_of_epoch(e) * (l + 1)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for e in epochs:
        b = 0
        for level in range(n_levels):
            for j in range(blocks_per_level):
                mean = drift_of_epoch(e) * (level + 1) * (j + 1) / blocks_per_level
                rows.append([e, b, f"encoder.{level}.{j}", level, 32 >> level, 4 << level, mean,
                             abs(mean), 1.0, update, update, 0.1, 0.0])
                b += 1
    pd.DataFrame(rows, columns=COLUMNS).to_csv(run_dir / "activations.csv", index=False)
    return run_dir


def _runs(tmp_path):
    rows = []
    # control, stage A depth 4: two survive with D = 1 + 0.1 e, one fails at epoch 8 after D
    # grows to 10
    for seed in range(2):
        d = _write(tmp_path / f"ctl4/seed={seed}", lambda e: 0.5 + 0.05 * e, range(-1, 10))
        rows.append((d, "ok", math.nan, "A", "hybrid_none_d4", "control", 4))
    d = _write(tmp_path / "ctl4/seed=2", lambda e: 0.5 + 0.5 * max(e, 0), range(-1, 8))
    rows.append((d, "nonfinite", 8, "A", "hybrid_none_d4", "control", 4))
    # control, stage B depth 8: larger drift
    for seed in range(2):
        d = _write(tmp_path / f"ctl8/seed={seed}", lambda e: 1.0 + 0.1 * e, range(-1, 10),
                   blocks_per_level=4)
        rows.append((d, "ok", math.nan, "B", "hybrid_none_d8", "control", 8))
    # stable_hybrid: no drift at all, zero update at init
    for seed in range(2):
        d = _write(tmp_path / f"st4/seed={seed}", lambda e: 0.0, range(-1, 10), update=0.0)
        rows.append((d, "ok", math.nan, "A", "stable_hybrid_none_d4", "arch_fix", 4))
    return pd.DataFrame(rows, columns=["run_dir", "status", "failure_epoch", "stage", "arm",
                                       "role", "depth"])


def test_drift_series_is_the_largest_last_block_mean(tmp_path):
    _write(tmp_path / "r", lambda e: 1.0, [-1, 0])
    acts = drift.load_activations({"r": tmp_path / "r"})
    lv = drift.level_drift(acts)
    assert lv[lv["epoch"] == 0].set_index("level")["drift"].to_dict() == {0: 1.0, 1: 2.0}
    s = drift.drift_series(acts)
    assert s["D"].tolist() == [2.0, 2.0]


def test_reading_numbers(tmp_path):
    runs = _runs(tmp_path)
    runs["run"] = [str(x) for x in runs["run_dir"]]
    acts = drift.load_activations({r: r for r in runs["run"]})
    nums = drift.reading_numbers(runs, acts)
    a = nums[("A", "hybrid_none_d4")]
    assert a["D_init"] == pytest.approx(0.9)  # level 1 last block at e=-1: 2 * 0.45 (2 of 3)
    # survivors end at e=9: 2 * (0.5 + 0.45) = 1.9; the failed run ends at e=7: 2 * 4.0 = 8
    assert a["D_end"] == pytest.approx(1.9)
    # before failure (epochs 3..7): failed D = 2 * (0.5 + 0.5 e) -> median at e=5: 6.0;
    # survivors over the same epochs: median at e=5: 2 * 0.75 = 1.5
    assert a["pre_fail"] == pytest.approx(6.0) and a["pre_survived"] == pytest.approx(1.5)
    assert (a["n_failed"], a["n_survived"]) == (1, 2)
    b = nums[("B", "hybrid_none_d8")]
    assert b["D_init"] == pytest.approx(1.8) and b["n_failed_total"] == 0
    s = nums[("A", "stable_hybrid_none_d4")]
    assert s["D_end"] == 0.0 and s["update_abs_init"] == 0.0


def _section(runs, report_dir, plots_dir) -> list[str]:
    """Load, draw, write: the section as the aggregation and the report make it."""
    data = drift.load_drift(runs)
    return drift_section(data, draw_drift(data, plots_dir), report_dir=report_dir)


def test_section_with_and_without_data(tmp_path):
    runs = _runs(tmp_path)
    lines = _section(runs, report_dir=tmp_path, plots_dir=tmp_path / "plots")
    text = "\n".join(lines)
    assert "## Activation drift" in text
    assert (tmp_path / "plots/drift_epochs.png").stat().st_size > 0
    assert (tmp_path / "plots/drift_depth.png").stat().st_size > 0
    assert "![drift_epochs](plots/drift_epochs.png)" in text
    assert "depth 4: D at init +0.9" in text and "depth 8: D at init +1.8" in text
    assert "median D +6 in the 5 epochs before failure (1 failed runs) vs +1.5" in text
    assert "Stage B, hybrid_none_d8: drift before failure: not measurable" in text
    # no activations at all: a heading and a note, no plots
    for f in tmp_path.rglob("activations.csv"):
        f.unlink()
    empty = "\n".join(_section(runs, report_dir=tmp_path, plots_dir=tmp_path / "plots2"))
    assert "## Activation drift" in empty and "left out" in empty
    assert not (tmp_path / "plots2").exists()


def test_the_aggregated_report_carries_the_section(tmp_path, factory):
    from ptychostab.analysis.pipeline import aggregate
    from ptychostab.report.outputs import write_outputs
    from ptychostab.report.render import render

    a = tmp_path / "stage_a"
    arms = [factory.CONTROL, factory.ARCH_FIX]
    factory.write_plan(a, [(arm, s) for arm in arms for s in range(3)])
    factory.write_arm(a, factory.CONTROL, [0.020, 0.022, "nonfinite"])
    factory.write_arm(a, factory.ARCH_FIX, [0.015, 0.016, 0.014])
    for s in range(3):
        _write(a / factory.arm_id_of(factory.CONTROL) / f"seed={s}",
               lambda e: 0.5 + 0.1 * max(e, 0), range(-1, 4))
        _write(a / factory.arm_id_of(factory.ARCH_FIX) / f"seed={s}", lambda e: 0.0,
               range(-1, 4), update=0.0)
    out = tmp_path / "report"
    result = aggregate([a])
    write_outputs(result, out)
    text = (out / "report.md").read_text()
    assert "## Activation drift (the hypothesis)" in text
    assert "![drift_epochs](plots/drift_epochs.png)" in text
    assert (out / "plots" / "drift_depth.png").exists()
    assert "(stable_hybrid): D at the end +0" in text
    assert "not measurable (the control ran at one depth only)" in text
    no_plots = render(aggregate([a], plot_inputs=False))
    assert "## Activation drift" in no_plots and "![drift" not in no_plots
