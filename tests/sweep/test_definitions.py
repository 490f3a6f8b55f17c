"""experiments/README.md, the report's Definitions and conf/decision/default.yaml cannot drift:
the README's rule section is the rendering of the rule file, and the report carries the same."""

from pathlib import Path

from ptychostab.analysis import decide as dec
from ptychostab.cli.aggregate import main
from ptychostab.report import rule_text as D

README = Path(__file__).resolve().parents[2] / "experiments" / "README.md"


def test_readme_rule_section_is_the_rendering_of_the_default_rule():
    text = README.read_text()
    assert D.readme_section(dec.load_rule()) in text, (
        "experiments/README.md is stale: paste `python -m ptychostab.cli.aggregate --print-rule`")


def test_rendering_follows_the_rule_values():
    data = {**_rule_dict(), "stage_b_tolerance": 0.25, "min_successful_seeds": 5}
    text = D.readme_section(dec.rule_from_dict(data))
    assert "at most 25% above its own Stage A median" in text
    assert "trusted with at least 5 finite values" in text
    assert D.readme_section(dec.load_rule()) != text


def test_outcome_table_rendered_row_by_row():
    lines = D.outcome_table()
    assert len(lines) == 2 + len(dec.OUTCOME_TABLE)
    assert lines[-1] == "| yes | yes | yes | fail | fail | **PIVOT** |"


def test_report_definitions_carry_the_same_gates():
    rule = dec.load_rule()
    body = "\n".join(D.report_definitions(rule, 2000, 0))
    for line in D.gate_lines(rule) + D.outcome_table():
        assert line in body


def test_print_rule(capsys):
    assert main(["--print-rule"]) == 0
    assert capsys.readouterr().out.strip() == D.readme_section(dec.load_rule())


def _rule_dict():
    import yaml

    return yaml.safe_load(dec.DEFAULT_RULE.read_text())
