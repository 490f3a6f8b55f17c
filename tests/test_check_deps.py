"""scripts/check_deps.py: installed versions inside pyproject.toml's bounds."""

import importlib.util
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_deps.py"
spec = importlib.util.spec_from_file_location("check_deps", SCRIPT)
check_deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_deps)


def test_this_environment_is_inside_the_bounds():
    assert check_deps.problems(check_deps.requirements()) == []


def test_the_bounds_we_rely_on_are_declared():
    reqs = {r.name: r.specifier for r in check_deps.requirements(extras=("tracking",))}
    assert not reqs["lightning"].contains("2.7.0") and reqs["lightning"].contains("2.6.6")
    assert not reqs["submitit"].contains("1.6.0") and reqs["submitit"].contains("1.5.4")
    assert not reqs["wandb"].contains("0.19.9") and reqs["wandb"].contains("0.19.10")
    assert "tqdm" in reqs


def test_a_version_outside_a_bound_is_reported_by_name():
    reqs = [Requirement("lightning>=2.1,<2.7"), Requirement("tqdm>=4.60")]
    fake = {"lightning": "2.7.1", "tqdm": "4.70.0"}.__getitem__
    found = check_deps.problems(reqs, installed=fake)
    assert len(found) == 1 and found[0].startswith("lightning 2.7.1 is outside the bound")


def test_an_absent_package_is_a_problem_unless_optional():
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    reqs = [Requirement("wandb>=0.19.10")]
    assert check_deps.problems(reqs, installed=absent) == [
        "wandb: not installed (needs >=0.19.10)"]
    assert check_deps.problems(reqs, installed=absent, optional=True) == []
