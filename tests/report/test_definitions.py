"""experiments/README.md, the report's Definitions and conf/decision/default.yaml cannot drift:
the README's rule section is the rendering of the rule file, and the report carries the same."""

from pathlib import Path

import pytest

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
    assert "at most 25% above the same arm's Stage A median" in text
    assert "trusted with at least 5 finite values" in text
    assert D.readme_section(dec.load_rule()) != text


def test_outcome_table_rendered_row_by_row():
    lines = D.outcome_table()
    assert len(lines) == 2 + len(dec.OUTCOME_TABLE)
    assert lines[-1] == "| yes | yes | yes | present | fail | fail | **PIVOT** |"


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


def test_readme_power_statement_is_the_rendering_for_the_presets_seed_count():
    """experiments/README.md states the power at the presets' seed count, as the dry run does."""
    from ptychostab import config as C

    text = README.read_text()
    for preset in ("stage_a", "stage_b"):
        cfg = C.compose([f"+experiment={preset}"], return_hydra_config=True)
        assert cfg.hydra.sweeper.params.seed == "range(24)"
    assert D.power_section(dec.load_rule(), 24) in text, (
        "experiments/README.md is stale: paste rule_text.power_section(load_rule(), 24)")
    assert "the presets\nrun **24 seeds per arm**" in text


@pytest.mark.parametrize("name", ["default", "demo"])
def test_rule_files_render_their_own_values(name):
    """Each rule file's Definitions carry its values: levels, effects, the declared protocol."""
    rule = dec.load_rule(dec.DEFAULT_RULE.parent / f"{name}.yaml")
    body = "\n".join(D.report_definitions(rule, 2000, 0))
    assert f"depth {rule.stages['A'].depth} / {rule.stages['B'].depth}" in body
    assert f"trainer.max_epochs {rule.stages['A'].protocol['trainer.max_epochs']}" in body
    assert "Newcombe 1998, method 11" in body and "percentile-bootstrap bounds" in body
    assert ("**Point reading** (`evidence: point`)" in body) == rule.point
    assert "(0/10: 0.21; 0/5: 0.35)" in body


def test_the_readme_says_what_the_demo_ends_with():
    from pathlib import Path as _P

    readme = (_P(__file__).resolve().parents[2] / "README.md").read_text()
    assert "point reading" in readme and "make demo" in readme
