"""A run's trackers name its stage without the analysis: the same answer as the rule's."""

import pytest

from ptychostab import identity
from ptychostab.analysis.rule import DEFAULT_RULE, load_rule, stage_of


@pytest.mark.parametrize("outside", [False, True])
@pytest.mark.parametrize("sweep, depth", [
    ("stage_a", 8), ("grid_lines_stage_b", 4), ("deep_study", 8), ("deep_study", "4"),
    ("clip_sweep", 4), ("demo_stage_a", None), ("other", 6), (None, None)])
def test_stage_from_the_rule_file_is_the_rules_stage(sweep, depth, outside):
    got = identity.stage_from_rule_file(sweep, depth, DEFAULT_RULE, outside=outside)
    assert got == stage_of(sweep, depth, load_rule(DEFAULT_RULE), outside=outside)
    assert (got == "outside") is outside


def test_sinks_name_the_stage_without_the_analysis():
    import subprocess
    import sys

    code = ("import sys; from ptychostab.runs.sinks import _stage; print(_stage('stage_b', 8)); "
            "print('ptychostab.analysis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["B", "False"]
