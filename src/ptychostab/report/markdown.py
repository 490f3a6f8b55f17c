"""Markdown building blocks of report.md and the README's rule section: table cells, tables,
image links, links relative to the report. Numbers are formatted by the analysis
(:func:`ptychostab.analysis.rule.fmt`); this module only makes text safe for Markdown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_NEWLINES = re.compile(r"\r\n|\r|\n")


def cell(value) -> str:
    """One table cell: ``|`` escaped, every line break (``\\n``, ``\\r\\n``, ``\\r``) as
    ``<br>``, so any text stays one cell of one row."""
    return _NEWLINES.sub("<br>", str(value).replace("|", "\\|"))


def table(header, rows) -> list[str]:
    """A pipe table: the header line, the rule line, one line per row (cells by :func:`cell`)."""
    lines = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]


def image(name: str, path: str) -> str:
    """``![name](path)``."""
    return f"![{name}]({path})"


def relative_path(path: str | None, out_dir: Path | None, name: str = "") -> str | None:
    """``path`` (/``name``) relative to the report's folder ``out_dir``, POSIX style (links in
    report.md); None for no path."""
    if not isinstance(path, str) or not path:
        return None
    target = Path(path) / name if name else Path(path)
    if out_dir is None:
        return target.as_posix()
    return Path(os.path.relpath(target, Path(out_dir).absolute())).as_posix()
