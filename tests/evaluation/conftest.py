"""A tiny noise-free dataset shared by the evaluation tests (N=32, S=96, 2 test objects)."""

import pytest

from ptychostab.data.simulate import simulate
from ptychostab.data.spec import DataConfig


@pytest.fixture(scope="session")
def tiny_data():
    spec = DataConfig(name="tiny", N=32, size=96, n_lines=40, nimgs_train=1, nimgs_test=2,
                      outer_offset_train=8, outer_offset_test=20, nphotons=1e9, set_phi=True)
    return simulate(spec, noise=False)
