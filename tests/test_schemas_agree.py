"""The Hydra schema of `trainer` (config.py) and the runtime settings the training code reads
(training/settings.py) are two declarations of one thing: same fields, same defaults."""

import dataclasses
import enum

from ptychostab.config import TrainerConfig
from ptychostab.training.settings import TrainerSettings


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, (list, tuple)):
            value = list(value)
        out[f.name] = value
    return out


def test_trainer_schema_and_runtime_settings_agree():
    schema, runtime = _defaults(TrainerConfig), _defaults(TrainerSettings)
    assert set(schema) == set(runtime), set(schema) ^ set(runtime)
    differing = {k: (schema[k], runtime[k]) for k in schema if schema[k] != runtime[k]}
    assert not differing
