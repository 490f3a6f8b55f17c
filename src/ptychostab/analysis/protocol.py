"""Do compared arms share a protocol? The arm identity (what ``arm_id`` hashes) key by key.

An arm's protocol is its manifest's resolved ``config`` restricted to the identity keys, run-only
leaves removed, flattened to dotted keys (``trainer.lr``). The key lists mirror
:mod:`ptychostab.identity` (``IDENTITY_KEYS``, ``RUN_ONLY_LEAVES``; a test keeps them
equal): the aggregator does not import Hydra, which that module needs.

Allowed to differ between compared arms: :data:`ALLOWED_WITHIN_STAGE`; across stages also
:data:`DEPTH_KEYS`; the clip sweep against the Stage A control also ``clip.*``.
"""

from __future__ import annotations

import json
from typing import Any

from ptychostab.runs.records import flatten

IDENTITY_KEYS = ("data", "arch", "clip", "trainer", "failure", "depth")
RUN_ONLY_LEAVES = (
    "data.name", "trainer.accelerator", "trainer.sync_every", "trainer.eval_batch_size",
    "trainer.max_data_on_device_gb", "trainer.compile", "trainer.cuda_graphs", "trainer.tf32",
    "trainer.progress", "trainer.log_every_n_steps",
)
# ``seed``, ``pack`` (seeds per job) and the other run-only top-level keys are outside
# IDENTITY_KEYS, so they never enter a protocol.
ALLOWED_WITHIN_STAGE = ("arch.name", "clip.algorithm", "clip.value", "seed")
DEPTH_KEYS = ("depth", "arch.fno_blocks")
MISSING = "<absent>"


def protocol_of(config: Any) -> dict[str, Any] | None:
    """The flattened identity config of a manifest ``config`` (None when there is none)."""
    if not isinstance(config, dict):
        return None
    flat = flatten({k: config[k] for k in IDENTITY_KEYS if k in config})
    return {k: v for k, v in flat.items() if k not in RUN_ONLY_LEAVES}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return float(a) == float(b)
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                    default=str)


def differences(a: dict[str, Any], b: dict[str, Any], allowed: tuple[str, ...] = (),
                allowed_prefixes: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``[(key, value in a, value in b)]`` for every key that differs, except ``allowed``
    keys and keys under ``allowed_prefixes``; sorted by key."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in allowed or any(key.startswith(p) for p in allowed_prefixes):
            continue
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if not _same(va, vb):
            out.append((key, va, vb))
    return out


def describe(diffs: list[tuple[str, Any, Any]], left: str, right: str) -> str:
    """``trainer.lr: 0.001 (control) vs 0.01 (fix)``; ``; ``-joined."""
    return "; ".join(f"{k}: {json.dumps(va, default=str)} ({left}) vs "
                     f"{json.dumps(vb, default=str)} ({right})" for k, va, vb in diffs)
