"""Do compared arms share a protocol? The arm identity (what ``arm_id`` hashes) key by key.

An arm's protocol is its manifest's resolved ``config`` restricted to the identity keys, run-only
leaves removed, flattened to dotted keys (``trainer.lr``). The key lists are
:mod:`ptychostab.identity`'s (``IDENTITY_KEYS``, ``RUN_ONLY_LEAVES``), which imports no Hydra.

Allowed to differ between compared arms: :data:`ALLOWED_WITHIN_STAGE`; across stages also
:data:`DEPTH_KEYS`; the clip sweep against the Stage A control only ``clip.*``. Every manifest
of an arm is read (:class:`ArmProtocol`: seeds under different protocols, runs with records but
no manifest), and each stage is held to the protocol its rule file declares
(:func:`against_declared`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from ptychostab.analysis.rule import ROLES, STAGES, DecisionRule
from ptychostab.identity import IDENTITY_KEYS, RUN_ONLY_LEAVES  # noqa: F401  (re-exported)
from ptychostab.runs.records import flatten

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


# --- an arm's protocol over its seeds --------------------------------------------------------
@dataclass(frozen=True)
class ArmProtocol:
    """The protocol of one arm, read from every manifest of its runs.

    ``protocol``: the protocol of its runs (the first seed's when they differ); ``variants``:
    when the seeds ran under more than one protocol, each distinct protocol with its seeds;
    ``no_manifest``: seeds with records (a result or a history) but no readable manifest: their
    protocol cannot be checked. An arm whose runs never started has neither.
    """

    protocol: dict[str, Any] | None = None
    variants: tuple[tuple[tuple[int, ...], dict[str, Any]], ...] = ()
    no_manifest: tuple[int, ...] = ()
    unknown: bool = False  # nothing says which runs lack a manifest (a bare ``None``)

    @property
    def untestable(self) -> bool:
        return bool(self.no_manifest) or self.unknown


def arm_protocol(entries: Iterable[tuple[int, dict[str, Any] | None, bool]]) -> ArmProtocol:
    """:class:`ArmProtocol` of an arm from ``(seed, protocol or None, has records)`` per run
    (``has records``: the run left a result or a history, i.e. it started)."""
    variants: list[tuple[list[int], dict[str, Any]]] = []
    no_manifest = []
    for seed, proto, has_records in sorted(entries, key=lambda e: e[0]):
        if proto is None:
            if has_records:
                no_manifest.append(int(seed))
            continue
        for seeds, known in variants:
            if not differences(known, proto):
                seeds.append(int(seed))
                break
        else:
            variants.append(([int(seed)], proto))
    first = variants[0][1] if variants else None
    return ArmProtocol(first, tuple((tuple(s), p) for s, p in variants) if len(variants) > 1
                       else (), tuple(no_manifest))


def as_arm_protocol(value: Any) -> ArmProtocol:
    """An :class:`ArmProtocol` from what a caller gives per arm: itself, a flattened protocol
    (dict), or None (no readable manifest: untestable)."""
    if isinstance(value, ArmProtocol):
        return value
    if isinstance(value, dict):
        return ArmProtocol(value)
    return ArmProtocol(None, unknown=True)


def depth_of(proto: dict[str, Any]) -> Any:
    """The depth of a flattened protocol (``depth``, else ``arch.fno_blocks``)."""
    return proto.get("depth", proto.get("arch.fno_blocks"))


def against_declared(proto: dict[str, Any], depth: int,
                     declared: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(key, value in the run, declared value)]`` where a run's protocol departs from a
    stage's declared one (its depth and each declared key)."""
    out = []
    have = depth_of(proto)
    if not _same(have if have is not None else MISSING, depth):
        out.append(("depth", have if have is not None else MISSING, depth))
    for key, want in declared.items():
        value = proto.get(key, MISSING)
        if not _same(value, want):
            out.append((key, value, want))
    return out


# --- the checks of a decision ----------------------------------------------------------------
#: (stage, sweep, arm_id) -> the arm's protocol (:class:`.ArmProtocol`, or a flattened
#: dict, or None for "no readable manifest")
Protocols = dict[tuple[str, str, str], Any]


def stage_arm_key(row: dict) -> tuple[str, str, str]:
    """``(stage, sweep, arm_id)`` of a summary row or a run: the key of :data:`Protocols`."""
    return (str(row.get("stage")), str(row.get("sweep")), str(row.get("arm_id")))


def _seeds(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in seeds)


@dataclass
class ProtocolCheck:
    """What the protocol checks found: ``mismatches`` between compared arms, across stages
    and among one arm's seeds; ``study``: departures from the stages' declared protocols
    (and Stage B not deeper than Stage A); ``unknown``: arms whose runs have records but no
    readable manifest; ``notes``: what could not be compared."""

    mismatches: list[str] = field(default_factory=list)
    study: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def column(self, rule: DecisionRule) -> str:
        """``no`` (a binding mismatch), ``untestable`` (a protocol unknown) or ``yes``;
        ``allow_protocol_mismatch`` lets everything go ahead, a demonstration rule its
        stages' declared protocols."""
        if rule.allow_protocol_mismatch:
            return "yes"
        if self.mismatches or (self.study and not rule.demonstration):
            return "no"
        return "untestable" if self.unknown else "yes"


def protocol_check(roles: dict[str, dict[str, dict]], protocols: Protocols | None,
                   rule: DecisionRule, stage_rows: dict[str, list[dict]]) -> ProtocolCheck:
    """Each stage's arms against the rule's declared protocol (depth and every declared key),
    compared arms against each other (all identity keys but
    :data:`.ALLOWED_WITHIN_STAGE`), each role arm across stages (all but depth; Stage
    B deeper), and the seeds of each arm among themselves."""
    out = ProtocolCheck()
    given = protocols is not None
    protocols = protocols or {}
    seen: dict[tuple[str, str, str], ArmProtocol] = {}

    def proto_of(row: dict) -> ArmProtocol:
        key = stage_arm_key(row)
        if key not in seen:
            seen[key] = as_arm_protocol(protocols.get(key))
            ap, label = seen[key], f"Stage {key[0]} '{row.get('arm_label')}'"
            if ap.no_manifest:
                out.unknown.append(f"{label}: seed(s) {_seeds(ap.no_manifest)} have records "
                                   "but no readable manifest: their protocol cannot be checked")
            elif ap.unknown:
                out.unknown.append(f"{label}: protocol unknown (" + (
                    "no readable manifest)" if given else "no protocols given)"))
            if len(ap.variants) > 1:
                (s0, p0), *rest = ap.variants
                for s1, p1 in rest:
                    out.mismatches.append(
                        f"{label}: seeds {_seeds(s0)} and seeds {_seeds(s1)} ran under "
                        "different protocols: " + describe(
                            differences(p0, p1), f"seeds {_seeds(s0)}",
                            f"seeds {_seeds(s1)}"))
        return seen[key]

    def compare(a: dict, b: dict, allowed: tuple[str, ...], where: str) -> None:
        pa, pb = proto_of(a).protocol, proto_of(b).protocol
        if pa is None or pb is None:
            who = a if pa is None else b
            out.notes.append(f"{where}: protocol of '{who.get('arm_label')}' unknown; not "
                             "compared")
            return
        diffs = differences(pa, pb, allowed)
        if diffs:
            out.mismatches.append(f"{where}: " + describe(
                diffs, str(a.get("arm_label")), str(b.get("arm_label"))))

    for stage in STAGES:
        spec = rule.stages[stage]
        compared_rows = stage_rows.get(stage, []) if rule.compare_with == "all" else list(
            roles.get(stage, {}).values())
        for row in compared_rows:
            proto_of(row)  # unknown protocols and seeds under several protocols
        for row in stage_rows.get(stage, []):
            ap = as_arm_protocol(protocols.get(stage_arm_key(row)))
            if ap.protocol is None:
                continue
            diffs = against_declared(ap.protocol, spec.depth, spec.protocol)
            if diffs:
                out.study.append(f"Stage {stage} '{row.get('arm_label')}' (sweep "
                                 f"`{row.get('sweep')}`) departs from the stage's declared "
                                 "protocol: " + describe(diffs, "run", "declared"))
        r = roles.get(stage, {})
        ctrl = r.get("control")
        if ctrl is None:
            continue
        compared = [r[x] for x in ("arch_fix", "opt_fix") if x in r]
        if rule.compare_with == "all":
            compared += [x for x in stage_rows.get(stage, []) if x is not ctrl
                         and all(x is not c for c in compared)]
        for fix in compared:
            compare(ctrl, fix, ALLOWED_WITHIN_STAGE,
                    f"Stage {stage} control vs '{fix.get('arm_label')}'")
    for role in ROLES:
        a, b = roles.get("A", {}).get(role), roles.get("B", {}).get(role)
        if a is None or b is None:
            continue
        compare(a, b, DEPTH_KEYS, f"{role} Stage A vs Stage B")
        pa, pb = proto_of(a).protocol, proto_of(b).protocol
        if pa is not None and pb is not None:
            da, db = depth_of(pa), depth_of(pb)
            if not (isinstance(da, (int, float)) and isinstance(db, (int, float)) and db > da):
                out.study.append(f"{role}: Stage B is not deeper than Stage A (depth {da} in "
                                 f"Stage A, {db} in Stage B)")
    return out
