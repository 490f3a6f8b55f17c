"""Small specs: the suite runs on 2 shared cores."""

import pytest

from ptychostab.data.spec import DataConfig

MICRO = dict(name="micro", N=16, size=40, n_lines=12, nimgs_train=1, nimgs_test=1,
             outer_offset_train=8, outer_offset_test=20, nphotons=1e9, set_phi=True)


@pytest.fixture
def micro():
    """Factory: ``micro(**overrides)`` -> N=16, S=40 spec (49 train / 4 test patterns per
    image; builds in tens of ms)."""

    def make(**overrides) -> DataConfig:
        return DataConfig(**{**MICRO, **overrides})

    return make
