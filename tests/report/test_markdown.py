"""Markdown building blocks: a cell stays one cell of one row whatever its text."""

from ptychostab.report.markdown import cell, image, relative_path, table


def test_cell_escapes_pipes_and_line_breaks():
    assert cell("a|b") == "a\\|b"
    assert cell("one\ntwo\r\nthree\rfour") == "one<br>two<br>three<br>four"
    assert cell(0.5) == "0.5"


def test_a_failure_message_with_newlines_and_pipes_renders_one_row():
    message = "RuntimeError: loss | grad\nTraceback (most recent call last):\n  x | y\n"
    lines = table(["Arm", "Message"], [["hybrid", message]])
    assert len(lines) == 3  # header, rule, one row
    row = lines[2]
    assert "\n" not in row and row.startswith("| hybrid | ") and row.endswith(" |")
    # the only unescaped pipes are the row's own borders: 3 of them for 2 cells
    assert row.replace("\\|", "").count("|") == 3
    assert "loss \\| grad<br>Traceback" in row


def test_header_cells_are_escaped_too():
    assert table(["a|b"], [])[0] == "| a\\|b |"


def test_image_and_relative_path(tmp_path):
    assert image("x", "plots/x.png") == "![x](plots/x.png)"
    run = tmp_path / "stage_a" / "arm" / "seed=0"
    assert relative_path(str(run), tmp_path / "report") == "../stage_a/arm/seed=0"
    assert relative_path(str(run), tmp_path, "run.log") == "stage_a/arm/seed=0/run.log"
    assert relative_path(None, tmp_path) is None
