"""``make_cfg(**overrides)``: the complete tiny composed config (as tests/runs)."""

import pytest

from ptychostab.training.testing import tiny_config


@pytest.fixture
def make_cfg():
    return tiny_config
