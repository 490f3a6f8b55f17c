"""The house's plan, held (docs/architecture.md): which room may import which, no import circle,
and the post-hoc rooms free of torch, Lightning and Hydra."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "ptychostab"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Our modules ``path`` imports (``ptychostab.*``), at module level or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level, including under `if`/`try` (not TYPE_CHECKING)
        nodes = [n for top in tree.body for n in ast.walk(top)
                 if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and not (isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test))]
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ptychostab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("ptychostab"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if _exists(full) else base)
    return out


def _exists(module: str) -> bool:
    path = SRC.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _files(room: str) -> list[Path]:
    root = PKG / room
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def _room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# room -> rooms of ours it must never import (anywhere, lazily included)
FORBIDDEN = {
    "analysis": {"report", "launch", "monitor", "cli", "config", "training", "models", "data",
                 "diagnostics", "tracking", "sweep"},
    "report": {"launch", "monitor", "cli", "config", "training", "models", "data",
               "diagnostics", "tracking", "sweep"},
    "monitor": {"report", "launch", "cli", "config", "training", "models", "data",
                "diagnostics", "tracking", "sweep"},
    "runs": {"analysis", "launch", "report", "monitor", "cli", "sweep"},
    "training": {"analysis", "launch", "report", "monitor", "cli", "runs", "sweep"},
    "identity": {"config", "analysis", "launch", "report", "monitor", "runs", "training", "cli",
                 "sweep"},
    "paths": {r.name for r in PKG.iterdir() if r.is_dir()} | {"identity", "atomic"},
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_dependencies_run_one_way(room):
    found = []
    for path in _files(room):
        for module in _imports(path, top_level_only=False):
            if _room_of(module) in FORBIDDEN[room]:
                found.append(f"{_module_name(path)} imports {module}")
    assert not found, "\n".join(found)


def test_runs_read_only_the_records_of_the_analysis_side():
    """analysis and report may import ``runs.records`` (the contract) and nothing else of runs."""
    found = [f"{_module_name(p)} imports {m}"
             for room in ("analysis", "report", "monitor") for p in _files(room)
             for m in _imports(p, top_level_only=False)
             if _room_of(m) == "runs" and m not in ("ptychostab.runs.records", "ptychostab.runs",
                                                     "ptychostab.runs.lock")]
    assert not found, "\n".join(found)


def _cycles() -> list[list[str]]:
    graph = {_module_name(p): {m for m in _imports(p, top_level_only=True) if _exists(m)}
             for p in PKG.rglob("*.py")}
    seen, stack, on_stack, cycles = set(), [], set(), []

    def visit(node: str) -> None:
        seen.add(node)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node.rpartition(".")[0] or node.startswith(nxt + "."):
                continue  # a module and its own package's __init__
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        on_stack.discard(node)

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    return cycles


def test_no_import_circle():
    assert _cycles() == []


def test_the_checks_above_can_fail(tmp_path, monkeypatch):
    """The graph walker sees a circle and a forbidden import when there is one."""
    fake = tmp_path / "ptychostab"
    (fake / "analysis").mkdir(parents=True)
    (fake / "report").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "analysis" / "__init__.py").write_text("")
    (fake / "report" / "__init__.py").write_text("")
    (fake / "analysis" / "a.py").write_text("from ptychostab.report import b\n")
    (fake / "report" / "b.py").write_text("from ptychostab.analysis import a\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    assert _cycles()
    with pytest.raises(AssertionError, match="imports ptychostab.report.b"):
        test_dependencies_run_one_way("analysis")


HEAVY = ("torch", "lightning", "hydra", "omegaconf")


@pytest.mark.parametrize("room", ["analysis", "monitor", "report"])
def test_post_hoc_rooms_import_no_torch_lightning_or_hydra(room):
    modules = [_module_name(p) for p in _files(room)]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=SRC.parent)
    assert out.stdout.strip() == "", f"{room} pulled in: {out.stdout.strip()}"


def test_old_module_paths_still_load_for_one_release():
    """Jobs submitted before the upgrade pickled ``ptychostab.sweep.callbacks.SweepPreflight``;
    every old ``ptychostab.sweep.<name>`` is its new home, the same module object."""
    import importlib
    import pickle

    from ptychostab.launch.preflight import SweepPreflight
    from ptychostab.sweep import MOVED

    old = pickle.loads(b"\x80\x02cptychostab.sweep.callbacks\nSweepPreflight\nq\x00.")
    assert old is SweepPreflight
    for name, new in MOVED.items():
        assert importlib.import_module(f"ptychostab.sweep.{name}") is importlib.import_module(new)
