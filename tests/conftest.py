"""Suite-wide settings: small thread pools (the CI machine has 2 cores) and an isolated cache."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_dataset_cache(tmp_path_factory, monkeypatch):
    """Every test gets a session-wide temporary dataset cache, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "dataset-cache"
    monkeypatch.setenv("PTYCHOSTAB_CACHE", str(cache))
    yield


@pytest.fixture(autouse=True)
def _isolated_calibration_cache(tmp_path_factory, monkeypatch):
    """Every test its own dry-run calibration cache (``launch/calibrate.py``; outside the
    test's ``tmp_path``), never the user's: a figure timed by one test never stands in
    another's estimate."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    monkeypatch.setenv("PTYCHOSTAB_CALIBRATION", str(path))
    yield


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pure tests (aggregator) need no torch
        pass
    yield


@pytest.fixture
def trackers_installed(monkeypatch):
    """Pretend the optional trackers (the ``[tracking]`` extra) are installed, for tests of
    composition and knobs that never import them (``make test`` does not install the extra)."""
    import importlib.machinery
    import importlib.util

    real = importlib.util.find_spec
    names = {"tensorboard", "mlflow", "wandb"}

    def find_spec(name, *args, **kwargs):
        if name in names:
            return real(name, *args, **kwargs) or importlib.machinery.ModuleSpec(name, None)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return names
