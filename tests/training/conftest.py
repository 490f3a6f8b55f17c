"""Fixtures: ``make_cfg(**overrides)`` builds the complete tiny composed config
(:func:`ptychostab.training.testing.tiny_config`: every field of docs/contracts.md)."""

import pytest

from ptychostab.training.testing import tiny_config


@pytest.fixture
def make_cfg():
    return tiny_config
