"""The decision rule's settings (``conf/decision/*.yaml``), stages and roles.

Every threshold of the study's verdict lives in the YAML file; this module validates it into a
:class:`DecisionRule` (unknown or missing keys are errors) and finds, among summary rows, the
stage of a sweep and the arm playing each role. The gates and the outcome are in
:mod:`ptychostab.analysis.gates` and :mod:`ptychostab.analysis.decide`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ptychostab.paths import DECISION_DIR, DEFAULT_RULE  # noqa: F401  (re-exported)

ROLES = ("control", "arch_fix", "opt_fix")
STAGES = ("A", "B")
CLIP = "clip"  # the stage tag of the clip sweep's runs (in no stage of the rule)
COMPARE_WITH = ("control", "all")


@dataclass(frozen=True)
class StageSpec:
    sweep_contains: str
    depth: int | None


@dataclass(frozen=True)
class ClipSweepSpec:
    sweep_contains: str


@dataclass(frozen=True)
class ArchFixRule:
    max_nonfinite: int


@dataclass(frozen=True)
class OptFixRule:
    max_median_loss_regression: float
    max_nonfinite: int | None


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds and role mapping of the decision rule (see ``conf/decision/default.yaml``)."""

    metric: str
    ssim_metric: str
    min_successful_seeds: int
    compare_with: str
    stage_b_tolerance: float
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


def _build(cls, data: Any, where: str, skip: tuple[str, ...] = ()) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)} - set(skip)
    unknown, absent = set(data) - names, names - set(data)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(names)}")
    if absent:
        raise ValueError(f"{where}: missing key(s) {sorted(absent)}")
    return dict(data)


def _fraction(value: Any, where: str, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < upper:
        raise ValueError(f"decision rule: {where} must be a number in [0, {upper})")
    return float(value)


def rule_from_dict(data: dict, name: str = "default") -> DecisionRule:
    """Validate a rule mapping (unknown, missing or malformed keys raise ``ValueError``)."""
    d = _build(DecisionRule, data, "decision rule", skip=("name",))
    roles = d["roles"]
    if not isinstance(roles, dict) or set(roles) != set(ROLES):
        raise ValueError(f"decision rule: roles must be exactly {list(ROLES)}, got {roles!r}")
    for role, spec in roles.items():
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"decision rule: roles.{role} must be a non-empty mapping")
    stages = d["stages"]
    if not isinstance(stages, dict) or set(stages) != set(STAGES):
        raise ValueError(f"decision rule: stages must be exactly {list(STAGES)}")
    d["stages"] = {k: StageSpec(**_build(StageSpec, v, f"stages.{k}")) for k, v in stages.items()}
    d["clip_sweep"] = ClipSweepSpec(**_build(ClipSweepSpec, d["clip_sweep"], "clip_sweep"))
    d["arch_fix"] = ArchFixRule(**_build(ArchFixRule, d["arch_fix"], "arch_fix"))
    d["opt_fix"] = OptFixRule(**_build(OptFixRule, d["opt_fix"], "opt_fix"))
    if d["compare_with"] not in COMPARE_WITH:
        raise ValueError(f"decision rule: compare_with must be one of {list(COMPARE_WITH)}")
    if not isinstance(d["min_successful_seeds"], int) or d["min_successful_seeds"] < 1:
        raise ValueError("decision rule: min_successful_seeds must be an int >= 1")
    d["stage_b_tolerance"] = _fraction(d["stage_b_tolerance"], "stage_b_tolerance", 1.0)
    d["median_ci_level"] = _fraction(d["median_ci_level"], "median_ci_level", 1.0)
    reg = _fraction(d["opt_fix"].max_median_loss_regression,
                    "opt_fix.max_median_loss_regression")
    d["opt_fix"] = OptFixRule(reg, d["opt_fix"].max_nonfinite)
    for key in ("robust_to_unsettled", "allow_protocol_mismatch", "demonstration"):
        if not isinstance(d[key], bool):
            raise ValueError(f"decision rule: {key} must be true or false")
    return DecisionRule(**d, name=name)


def load_rule(path: str | Path = DEFAULT_RULE) -> DecisionRule:
    """Read and validate a decision-rule YAML file (its stem becomes ``rule.name``)."""
    with open(path, encoding="utf-8") as fh:
        return rule_from_dict(yaml.safe_load(fh), name=Path(path).stem)


# --- stages and roles ------------------------------------------------------------------------
def stage_of(sweep: str | None, depth: Any, rule: DecisionRule) -> str:
    """``"clip"`` for the clip sweep, ``"A"``/``"B"`` by sweep name (contains the stage's
    text), else by depth; else ``""``."""
    name = (sweep or "").lower()
    if rule.clip_sweep.sweep_contains and rule.clip_sweep.sweep_contains.lower() in name:
        return CLIP
    for stage, spec in rule.stages.items():
        if spec.sweep_contains and spec.sweep_contains.lower() in name:
            return stage
    for stage, spec in rule.stages.items():
        if spec.depth is not None and values_match(depth, spec.depth):
            return stage
    return ""


def _norm(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        return "none" if text in ("", "null") else text


def values_match(a: Any, b: Any) -> bool:
    """Equal as numbers when both read as numbers, else as lower-case text (null = "none")."""
    return _norm(a) == _norm(b)


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
