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


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pure tests (aggregator) need no torch
        pass
    yield
