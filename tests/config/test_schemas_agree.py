"""The Hydra schemas of `trainer` and `failure` (config/schema.py) and the runtime settings the
training code reads (training/settings.py, training/monitors.py) are two declarations of one
thing: same fields, same defaults, and a bound the runtime treats as "off when None" is
Optional in the schema (so `failure.collapse_ssim=null` composes)."""

import dataclasses
import enum
import typing

from ptychostab import config as cfgmod
from ptychostab.config import FailureConfig, TrainerConfig
from ptychostab.training.monitors import FailureSettings
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


def test_failure_schema_and_runtime_settings_agree():
    schema, runtime = _defaults(FailureConfig), _defaults(FailureSettings)
    assert set(schema) == set(runtime), set(schema) ^ set(runtime)
    assert {k: (schema[k], runtime[k]) for k in schema if schema[k] != runtime[k]} == {}


def _optional(cls, name: str) -> bool:
    tp = typing.get_type_hints(cls)[name]
    return type(None) in typing.get_args(tp)


def test_failure_bounds_off_when_none_are_optional_in_the_schema():
    for f in dataclasses.fields(FailureSettings):
        assert _optional(FailureConfig, f.name) == _optional(FailureSettings, f.name), f.name


def test_a_null_collapse_bound_composes_and_reaches_the_monitors():
    cfg = cfgmod.compose(["failure.collapse_ssim=null", "failure.collapse_rel_std=null"])
    settings = FailureSettings.from_config(cfgmod.to_plain(cfg).failure)
    assert settings.collapse_ssim is None and settings.collapse_rel_std is None
    bad = cfgmod.problems(cfgmod.compose(["failure.collapse_ssim=1.5"], check=False))
    assert any("failure.collapse_ssim" in p and "null" in p for p in bad)
