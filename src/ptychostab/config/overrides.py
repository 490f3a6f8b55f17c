"""The schema as a tree of keys: unknown-key messages and the command-line override check."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from ptychostab.config.errors import ConfigError
from ptychostab.config.schema import TrainConfig
from ptychostab.paths import CONF_DIR

#: Config groups: a key of the command line that selects an option, not a schema field.
GROUPS = tuple(sorted({p.name for p in CONF_DIR.iterdir() if p.is_dir()} | {"experiment"}))


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: fall back to the fields' raw types
        import dataclasses

        return {f.name: f.type for f in dataclasses.fields(cls)}


def _node_class(tp: Any) -> type | None:
    """The dataclass a field holds (Optional[...] unwrapped), else None."""

    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _open(tp: Any) -> bool:
    """A field that takes any sub-key (a Dict) or items (a List)."""
    if typing.get_origin(tp) is typing.Union:
        return any(_open(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) in (dict, list) or tp in (dict, list, Any)


def unknown_key(key: str, schema: type | None = None) -> str | None:
    """Why ``key`` (dotted) is not a key of the schema, or None when it is. The message names
    the closest valid key and the keys of the node it was looked up in."""
    cls: type | None = schema or TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        assert cls is not None
        hints = _hints(cls)
        node = ".".join(parts[:i])
        if part not in hints:
            names = sorted(hints)
            full = [f"{node}.{n}" if node else n for n in names]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            guess = (f"did you mean {' or '.join((node + '.' + c) if node else c for c in close)}?"
                     if close else "no key is close")
            where = f"'{node}'" if node else "the config"
            return (f"{key}: {where} has no key {part!r}; {guess} Valid keys of "
                    f"{node or 'the config'}: {', '.join(full)}")
        tp = hints[part]
        if _open(tp):
            return None
        sub = _node_class(tp)
        if sub is None:
            if i < len(parts) - 1:
                return (f"{key}: {'.'.join(parts[:i + 1])} is a value, it has no key "
                        f"{parts[i + 1]!r}")
            return None
        cls = sub
    return None


def _is_list_field(key: str) -> bool:
    cls: Any = TrainConfig
    parts = key.split(".")
    for part in parts[:-1]:
        cls = _node_class(_hints(cls).get(part)) if cls is not None else None
    if cls is None:
        return False
    tp = _hints(cls).get(parts[-1])
    if typing.get_origin(tp) is typing.Union:
        return any(typing.get_origin(a) is list for a in typing.get_args(tp))
    return typing.get_origin(tp) is list


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse command-line overrides of keys the schema does not have (``+`` included: Hydra's
    ``+key=value`` adds a key to a typed config without a check), before Hydra composes.
    Group choices (``arch=fno``, ``+experiment=...``, ``hydra/launcher=...``) and ``hydra.*``
    are Hydra's to check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = []
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return  # a syntax error: Hydra reports it with its own message
    for ov in parsed:
        key = ov.key_or_group
        if ov.is_delete() or "/" in key or "@" in key or key.split(".")[0] == "hydra":
            continue
        if key == "local" and not ov.is_sweep_override():
            # `optional local: default` in train.yaml: Hydra silently skips a missing option
            name = ov.value()
            options = sorted(p.stem for p in (CONF_DIR / "local").glob("*.yaml"))
            if isinstance(name, str) and name not in options:
                found.append(f"local={name}: no conf/local/{name}.yaml; options of group "
                             f"local: {', '.join(options)}")
            continue
        if ov.package is not None or (key in GROUPS and "." not in key):
            continue
        problem = unknown_key(key)
        if problem:
            found.append(problem)
        elif ov.is_sweep_override() is False and _is_list_field(key):
            value = ov.value()
            if not isinstance(value, (list, tuple)) and value is not None:
                text = ov.get_value_element_as_str()
                found.append(f"{key}={text}: {key} is a list; write {key}=[{text}]")
    if found:
        raise ConfigError("\n  - ".join(
            [f"unknown config key{'s' if len(found) > 1 else ''} (nothing was run):", *found]))


def extra_keys(obj: Any, cls: type, prefix: str = "") -> list[str]:
    """Keys of a composed config (or plain dict) that its schema does not declare."""
    out: list[str] = []
    if not isinstance(obj, (dict, DictConfig)):
        return out
    hints = _hints(cls)
    for key in list(obj.keys()):
        name = f"{prefix}{key}"
        if not prefix and key == "hydra":
            continue
        if key not in hints:
            out.append(unknown_key(name) or name)
            continue
        sub = _node_class(hints[key])
        if sub is not None and not _open(hints[key]):
            try:
                child = obj[key]
            except Exception:
                continue
            out.extend(extra_keys(child, sub, f"{name}."))
    return out
