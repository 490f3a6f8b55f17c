"""report.md: a golden file for a small fixed input, and the warnings it must carry.

Regenerate the golden file after an intended change of the report with
``PTYCHOSTAB_UPDATE_GOLDEN=1 .venv/bin/pytest tests/report/test_report.py`` and review the diff.
"""

import os
from pathlib import Path

import pytest

from ptychostab.analysis.caveats import MAX_LISTED, listing
from ptychostab.analysis.pipeline import aggregate
from ptychostab.report.render import render
from ptychostab.runs import records

GOLDEN = Path(__file__).parent / "golden" / "report.md"


def small_study(root: Path, f) -> list[Path]:
    """Stage A: 3 arms x 4 seeds (a NaN run, a missing run, a corrupt result);
    Stage B: control and arch fix x 3 seeds."""
    a, b = root / "stage_a", root / "stage_b"
    arms = [f.CONTROL, f.ARCH_FIX, f.OPT_FIX]
    f.write_plan(a, [(arm, s) for arm in arms for s in range(4)])
    f.write_arm(a, f.CONTROL, [0.020, 0.022, "nonfinite", 0.021])
    f.write_arm(a, f.ARCH_FIX, [0.015, 0.016, 0.014, None])
    f.write_arm(a, f.OPT_FIX, [0.0215, 0.0225, 0.021, 0.5])
    bad = a / f.arm_id_of(f.OPT_FIX) / "seed=3" / records.RESULT
    bad.write_text(bad.read_text()[:40])
    deep = [f.at_depth(f.CONTROL, 8), f.at_depth(f.ARCH_FIX, 8)]
    f.write_plan(b, [(arm, s) for arm in deep for s in range(3)])
    f.write_arm(b, deep[0], ["diverged", 0.03, "nonfinite"])
    f.write_arm(b, deep[1], [0.025, 0.026, 0.024])
    return [a, b]


def test_golden_report(tmp_path, factory):
    text = render(aggregate(small_study(tmp_path, factory), plot_inputs=False))
    if os.environ.get("PTYCHOSTAB_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
        pytest.skip(f"golden report regenerated: {GOLDEN}")
    assert text == GOLDEN.read_text()


def test_golden_report_content_is_what_the_study_needs():
    text = GOLDEN.read_text()
    assert "## Decision: **INCOMPLETE**" in text
    assert "unsettled runs left out; what has no data yet read either way): **SILVER or " \
           "PIVOT**." in text
    assert "Premise: **present**: the control failed (Stage A 1/4 (upper bound 0.644)" in text
    assert "- Stage B: no arm for role opt_fix (arch=hybrid, clip=agc)" in text
    assert "- Stage A arch_fix: failure rate vs hybrid inconclusive (+0.25 [-0.418, +0.737]): " \
           "about 26 seeds per arm would settle it" in text
    assert "settle 1 run(s) (seed=3 (corrupt))" in text
    assert "1 corrupt record(s): stage_a/hybrid+agc0.01/seed=3 (corrupt result.json" in text
    assert "| stable_hybrid | arch_fix | 4 | 3 | 0 | 0/3 = 0 [0, 0.5615] | 0 | 1 missing |" in text
    assert ("| Stage B | arch_fix | deep median best_val_loss | Stage A | +0.667 [+0.5, +0.857] "
            "| **fail** |") in text
    assert "## Definitions" in text
    assert "| yes | yes | yes | present | fail | fail | **PIVOT** |" in text


def test_warnings(tmp_path, factory):
    d = tmp_path / "stage_a"
    factory.write_arm(d, factory.CONTROL, [0.02, 0.02], commit="aaaa", dirty=True)
    factory.write_arm(d, factory.ARCH_FIX, [0.01, 0.01, 0.01], commit="bbbb",
                      phase_constant=True)
    factory.write_arm(tmp_path / "clips", {**factory.CONTROL, "clip": "norm", "depth": 6,
                                           "label": "hybrid+norm1"}, [0.02])
    w = aggregate([d, tmp_path / "clips"], plot_inputs=False).warnings
    assert "arm(s) with fewer than 3 successful seeds: hybrid (2 ok, stage A), " \
           "hybrid+norm1 (1 ok, stage -)" in w
    assert "mixed git commits: aaaa (2 runs), bbbb (3 runs), c0ffee0 (1 runs)" in w
    assert "2 run(s) from a dirty working tree (uncommitted changes)" in w
    assert ("3 run(s) with a constant ground-truth phase (set_phi off?): their phase metrics "
            "are vacuous") in w
    assert "arm(s) in no stage (not in the decision): clips/hybrid+norm1" in w


def test_set_phi_off_counts_as_vacuous(tmp_path, factory):
    factory.write_arm(tmp_path / "s", factory.CONTROL, [0.1, 0.1, 0.1], set_phi=False)
    w = aggregate([tmp_path / "s"], plot_inputs=False).warnings
    assert any(x.startswith("3 run(s) with a constant ground-truth phase") for x in w)


def test_listing_is_capped():
    assert listing(list("ab")) == "a, b"
    long = listing([str(i) for i in range(MAX_LISTED + 3)])
    assert long.endswith(f"{MAX_LISTED - 1}, ... and 3 more")
