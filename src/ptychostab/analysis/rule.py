"""The decision rule's settings (``conf/decision/*.yaml``), stages and roles.

Every threshold of the study's verdict lives in the YAML file; this module validates it whole
into a :class:`DecisionRule` (unknown or missing keys, and every value outside its range, are
reported together, each naming the key, the value and the allowed range) and finds, among
summary rows, the stage of a sweep and the arm playing each role. The gates and the outcome are
in :mod:`ptychostab.analysis.gates` and :mod:`ptychostab.analysis.decide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ptychostab.identity import CLIP_STAGE as CLIP  # noqa: F401  (re-exported)
from ptychostab.identity import OUTSIDE_STAGE as OUTSIDE  # noqa: F401  (re-exported)
from ptychostab.identity import stage_name, values_match
from ptychostab.paths import DECISION_DIR, DEFAULT_RULE  # noqa: F401  (re-exported)

ROLES = ("control", "arch_fix", "opt_fix")
STAGES = ("A", "B")
COMPARE_WITH = ("control", "all")
EVIDENCE = ("interval", "point")
#: top-level config nodes a stage's declared protocol may name (dotted keys below them)
PROTOCOL_NODES = ("data", "arch", "clip", "trainer", "failure")
#: keys that differ between the arms of a stage by design: never part of a stage's protocol
NOT_PROTOCOL = ("arch.name", "arch.fno_blocks", "clip.algorithm", "clip.value")


@dataclass(frozen=True)
class StageSpec:
    """How a stage is recognised (sweep name, else depth) and the protocol it must follow:
    ``depth`` and the flattened ``protocol`` (``{"data.N": 64, "trainer.max_epochs": 50}``)."""

    sweep_contains: str
    depth: int
    protocol: dict[str, Any]


@dataclass(frozen=True)
class ClipSweepSpec:
    sweep_contains: str


@dataclass(frozen=True)
class ArchFixRule:
    max_nonfinite: int | None  # Stage A (Stage B: StageBRule)


@dataclass(frozen=True)
class OptFixRule:
    max_median_loss_regression: float
    max_nonfinite: int | None  # Stage A (Stage B: StageBRule)


@dataclass(frozen=True)
class MinEffect:
    """The smallest improvements the study cares about (superiority gates fail below them)."""

    failure_rate: float  # absolute: rate_control - rate_fix
    loss: float  # relative: 1 - median_fix / median_control


@dataclass(frozen=True)
class StageBRule:
    """Stage B's conditions, for both fixes (strategy section 2)."""

    max_nonfinite: int | None
    grad_norm_factor: float


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds and role mapping of the decision rule (see ``conf/decision/default.yaml``)."""

    metric: str
    ssim_metrics: tuple[str, ...]
    min_successful_seeds: int
    compare_with: str
    evidence: str
    evidence_level: float
    min_effect: MinEffect
    premise_failure_rate: float
    stage_b_tolerance: float
    stage_b: StageBRule
    robust_to_unsettled: bool
    allow_protocol_mismatch: bool
    median_ci_level: float
    demonstration: bool
    roles: dict[str, dict[str, Any]]
    stages: dict[str, StageSpec]
    clip_sweep: ClipSweepSpec
    arch_fix: ArchFixRule
    opt_fix: OptFixRule
    name: str = "default"  # the file's stem (not a YAML key)

    @property
    def point(self) -> bool:
        """True for the strategy's literal point reading (``evidence: point``)."""
        return self.evidence == "point"


_ABSENT = object()  # a missing key: reported once, as missing, not again as a bad value


class _Errors:
    """Collects every problem of a rule file, so that it is reported whole."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, value: Any, allowed: str) -> None:
        self.items.append(f"{key}: {value!r} is not allowed; allowed: {allowed}")

    def keys(self, data: Any, cls, where: str, skip: tuple[str, ...] = ()) -> dict:
        """The mapping's keys against the dataclass's fields (unknown and missing ones)."""
        if not isinstance(data, dict):
            self.add(where or "decision rule", data, "a mapping")
            return {}
        names = {f.name for f in fields(cls)} - set(skip)
        prefix = f"{where}." if where else ""
        for key in sorted(set(data) - names, key=str):
            self.add(f"{prefix}{key}", data[key], f"no such key (unknown key; known: "
                                                  f"{sorted(names)})")
        for key in sorted(names - set(data)):
            self.items.append(f"{prefix}{key}: missing key (every key is required)")
        return {k: v for k, v in data.items() if k in names}

    def number(self, key: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
               hi_open: bool = True, integer: bool = False, null: bool = False) -> Any:
        """``value`` when it is a number in the range (``null``: None allowed), else None."""
        if value is _ABSENT or (value is None and null):
            return None
        ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float))) \
            and not isinstance(value, bool)
        ok = ok_type and math.isfinite(value) and (value > lo if lo_open else value >= lo) and (
            value < hi if hi_open else value <= hi)
        if not ok:
            kind = "an integer" if integer else "a number"
            rng = (f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
                   if math.isfinite(hi) else f"{'>' if lo_open else '>='} {lo:g}")
            self.add(key, value, f"{kind} {rng}" + (" or null" if null else ""))
            return None
        return int(value) if integer else float(value)

    def choice(self, key: str, value: Any, options: tuple) -> Any:
        if value is not _ABSENT and value not in options:
            self.add(key, value, f"one of {list(options)}")
        return value

    def flag(self, key: str, value: Any) -> Any:
        if value is not _ABSENT and not isinstance(value, bool):
            self.add(key, value, "true or false")
        return value

    def text(self, key: str, value: Any) -> Any:
        if value is not _ABSENT and (not isinstance(value, str) or not value.strip()):
            self.add(key, value, "a non-empty text")
        return value

    def sub(self, data: dict, key: str, cls) -> dict:
        """The keys of a nested mapping (``{}`` when the mapping itself is missing)."""
        return self.keys(data[key], cls, key) if key in data else {}


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _protocol(errs: _Errors, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        errs.add(where, value, "a mapping of config keys to values (data, trainer, failure, ...)")
        return {}
    flat = _flat(value)
    for key, v in flat.items():
        node = key.split(".")[0]
        if node not in PROTOCOL_NODES or "." not in key or key in NOT_PROTOCOL:
            errs.add(f"{where}.{key}", v, f"a key under {list(PROTOCOL_NODES)} other than "
                                          f"{list(NOT_PROTOCOL)} (depth is the stage's own)")
        elif not (v is None or isinstance(v, (bool, int, float, str))):
            errs.add(f"{where}.{key}", v, "a single value (number, text, true/false, null)")
    return flat


def rule_from_dict(data: Any, name: str = "default") -> DecisionRule:
    """Validate a rule mapping whole: every problem (unknown or missing key, a value outside
    its range) is collected and raised together as one ``ValueError``, one line each naming
    the key, the value and the allowed range."""
    errs = _Errors()
    d = errs.keys(data, DecisionRule, "", skip=("name",))

    def g(key: str) -> Any:
        return d.get(key, _ABSENT)

    out: dict[str, Any] = {"metric": errs.text("metric", g("metric"))}
    ssim = g("ssim_metrics")
    if "ssim_metrics" in d and (not isinstance(ssim, list) or not ssim or not all(
            isinstance(m, str) and m for m in ssim)):
        errs.add("ssim_metrics", ssim, "a non-empty list of metric names (e.g. [amp_ssim, "
                                       "phase_ssim])")
    out["ssim_metrics"] = tuple(ssim) if isinstance(ssim, list) else ()
    out["min_successful_seeds"] = errs.number("min_successful_seeds",
                                              g("min_successful_seeds"), 1, math.inf,
                                              integer=True)
    out["compare_with"] = errs.choice("compare_with", g("compare_with"), COMPARE_WITH)
    out["evidence"] = errs.choice("evidence", g("evidence"), EVIDENCE)
    for key in ("evidence_level", "median_ci_level"):
        out[key] = errs.number(key, g(key), 0.5, 1.0, lo_open=True)
    me = errs.sub(d, "min_effect", MinEffect)
    out["min_effect"] = MinEffect(*(errs.number(f"min_effect.{k}", me.get(k, _ABSENT), 0.0, 1.0)
                                    for k in ("failure_rate", "loss")))
    out["premise_failure_rate"] = errs.number("premise_failure_rate", g("premise_failure_rate"),
                                              0.0, 1.0, lo_open=True)
    out["stage_b_tolerance"] = errs.number("stage_b_tolerance", g("stage_b_tolerance"), 0.0, 1.0)
    sb = errs.sub(d, "stage_b", StageBRule)
    out["stage_b"] = StageBRule(
        errs.number("stage_b.max_nonfinite", sb.get("max_nonfinite", _ABSENT), 0, math.inf,
                    integer=True, null=True),
        errs.number("stage_b.grad_norm_factor", sb.get("grad_norm_factor", _ABSENT), 1.0,
                    math.inf))
    for key in ("robust_to_unsettled", "allow_protocol_mismatch", "demonstration"):
        out[key] = errs.flag(key, g(key))
    roles = g("roles")
    if "roles" in d and (not isinstance(roles, dict) or set(roles) != set(ROLES)):
        errs.add("roles", roles, f"a mapping with exactly the roles {list(ROLES)}")
    elif isinstance(roles, dict):
        for role, spec in roles.items():
            if not isinstance(spec, dict) or not spec:
                errs.add(f"roles.{role}", spec, "a non-empty mapping of arm fields to values")
    out["roles"] = roles if isinstance(roles, dict) else {}
    stages = g("stages")
    out["stages"] = {}
    if "stages" in d and (not isinstance(stages, dict) or set(stages) != set(STAGES)):
        errs.add("stages", stages, f"a mapping with exactly the stages {list(STAGES)}")
    elif isinstance(stages, dict):
        for key in STAGES:
            st = errs.keys(stages[key], StageSpec, f"stages.{key}")
            out["stages"][key] = StageSpec(
                errs.text(f"stages.{key}.sweep_contains", st.get("sweep_contains", _ABSENT)),
                errs.number(f"stages.{key}.depth", st.get("depth", _ABSENT), 1, math.inf,
                            integer=True),
                _protocol(errs, f"stages.{key}.protocol", st.get("protocol", {})))
        da, db = (out["stages"][s].depth for s in STAGES)
        if isinstance(da, int) and isinstance(db, int) and db <= da:
            errs.add("stages.B.depth", db, f"an integer > stages.A.depth ({da}): Stage B is "
                                           "the deeper one")
    clip = errs.sub(d, "clip_sweep", ClipSweepSpec)
    out["clip_sweep"] = ClipSweepSpec(errs.text("clip_sweep.sweep_contains",
                                                clip.get("sweep_contains", _ABSENT)))
    af = errs.sub(d, "arch_fix", ArchFixRule)
    out["arch_fix"] = ArchFixRule(errs.number("arch_fix.max_nonfinite",
                                              af.get("max_nonfinite", _ABSENT), 0, math.inf,
                                              integer=True, null=True))
    of = errs.sub(d, "opt_fix", OptFixRule)
    out["opt_fix"] = OptFixRule(
        errs.number("opt_fix.max_median_loss_regression",
                    of.get("max_median_loss_regression", _ABSENT), 0.0, 1.0),
        errs.number("opt_fix.max_nonfinite", of.get("max_nonfinite", _ABSENT), 0, math.inf,
                    integer=True, null=True))
    if errs.items:
        raise ValueError(f"decision rule '{name}' refused ({len(errs.items)} problem(s)):\n- "
                         + "\n- ".join(errs.items))
    return DecisionRule(**out, name=name)


def load_rule(path: str | Path = DEFAULT_RULE) -> DecisionRule:
    """Read and validate a decision-rule YAML file (its stem becomes ``rule.name``)."""
    with open(path, encoding="utf-8") as fh:
        return rule_from_dict(yaml.safe_load(fh), name=Path(path).stem)


# --- stages and roles ------------------------------------------------------------------------
def stage_of(sweep: str | None, depth: Any, rule: DecisionRule,
             outside: bool = False) -> str:
    """The stage tag of a sweep's runs: ``"outside"`` for a sweep declared outside the study
    (config ``outside_study``: never in a stage), ``"clip"`` for the clip sweep, ``"A"``/``"B"``
    by sweep name (it contains the stage's text), else by depth (:func:`by_depth` says when);
    else ``""`` (:func:`ptychostab.identity.stage_name`)."""
    return stage_name(sweep, depth, rule.clip_sweep.sweep_contains,
                      {k: (v.sweep_contains, v.depth) for k, v in rule.stages.items()},
                      outside=outside)


def by_depth(sweep: str | None, rule: DecisionRule) -> bool:
    """True when a sweep of this name gets its stage from the depth fallback (no stage's and
    not the clip sweep's text in its name): the report says so."""
    name = (sweep or "").lower()
    texts = [rule.clip_sweep.sweep_contains] + [v.sweep_contains for v in rule.stages.values()]
    return not any(t and t.lower() in name for t in texts)


def matches(row: dict, spec: dict) -> bool:
    """True when every ``field: value`` of ``spec`` matches the row (``label`` = ``arm_label``)."""
    for key, want in spec.items():
        have = row.get("arm_label" if key == "label" else key, row.get(f"arm_{key}"))
        if not values_match(have, want):
            return False
    return True


def control_names(control: str | None) -> set[str]:
    """``"a,b"`` -> ``{"a", "b"}``: the labels or arm_ids that may play the control."""
    return {c.strip() for c in (control or "").split(",") if c.strip()}


def resolve_roles(rows: list[dict], rule: DecisionRule,
                  control: str | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """Pick the arm of each role among one stage's rows.

    Returns ``(roles, problems)``: ``roles[role]`` is the matching row when exactly one arm
    matches; ``problems[role]`` says why not otherwise. ``control`` (arm labels or arm_ids,
    comma-separated, e.g. one per stage) replaces the rule's control spec.
    """
    roles, problems = {}, {}
    names = control_names(control)
    for role in ROLES:
        if role == "control" and names:
            hits = [r for r in rows if {r.get("arm_label"), r.get("arm_id")} & names]
            spec_text = f"label or arm_id in {','.join(sorted(names))}"
        else:
            hits = [r for r in rows if matches(r, rule.roles[role])]
            spec_text = ", ".join(f"{k}={v}" for k, v in rule.roles[role].items())
        taken = [k for k, v in roles.items() if hits and v is hits[0]]
        if len(hits) == 1 and taken:
            problems[role] = (f"role {role} ({spec_text}): arm '{hits[0].get('arm_label')}' "
                              f"already plays {taken[0]}")
        elif len(hits) == 1:
            roles[role] = hits[0]
        elif not hits:
            problems[role] = f"no arm for role {role} ({spec_text})"
        else:
            labels = ", ".join(sorted(str(r.get("arm_label")) for r in hits))
            problems[role] = (f"role {role} ({spec_text}) matches {len(hits)} arms ({labels}); "
                              "pin it in the rule's roles or with --control")
    return roles, problems


def fmt(x: Any) -> str:
    """Four significant digits; ``n/a`` for None/NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.4g}" if isinstance(x, float) else str(x)
