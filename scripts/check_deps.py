"""Are the installed packages inside the bounds pyproject.toml declares? (run by `make test`)

We rely on internals of some dependencies (Lightning's CSVLogger and SIGTERM handler,
submitit's USR2 requeue and ``.submitit`` layout, W&B's ``reinit="create_new"``), so their
versions are bounded; a virtual environment that drifted outside the bounds (a manual
``pip install -U``) is reported here, before the tests run, naming each package, its
installed version and the bound. Only the environment that runs ``make test`` is checked: the
GPU scripts run ``src/`` on the device's own torch and Lightning and never call this.

    .venv/bin/python scripts/check_deps.py [--extra tracking]
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(pyproject: Path = PYPROJECT, extras: tuple[str, ...] = ()) -> list[Requirement]:
    """The project's dependencies (and the named extras')."""
    if tomllib is None:
        raise SystemExit("check_deps: needs Python >= 3.11 (tomllib) to read pyproject.toml")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project.get("optional-dependencies", {}).get(extra, [])
    return [Requirement(t) for t in texts]


def problems(reqs: list[Requirement], installed=metadata.version, *,
             optional: bool = False) -> list[str]:
    """One line per requirement not met; a package that is absent counts only when not
    ``optional`` (an extra's package may be left out)."""
    out = []
    for req in reqs:
        try:
            version = installed(req.name)
        except metadata.PackageNotFoundError:
            if not optional:
                out.append(f"{req.name}: not installed (needs {req.specifier or 'any version'})")
            continue
        if req.specifier and not req.specifier.contains(Version(version), prereleases=True):
            out.append(f"{req.name} {version} is outside the bound {req.specifier} "
                       f"(pyproject.toml); reinstall with `make install`")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[],
                        help="also check an optional extra's packages that are installed")
    args = parser.parse_args(argv)
    found = problems(requirements())
    for extra in args.extra:
        found += problems(requirements(extras=(extra,))[len(requirements()):], optional=True)
    for line in found:
        print(f"check_deps: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
