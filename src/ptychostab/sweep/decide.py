"""The study's decision rule (strategy section 5), evaluated from per-arm summaries.

Inputs are summary rows (dicts, one per arm, as written to ``summary.csv``) carrying ``stage``,
``arm_id``, ``arm_label``, the arm fields, the counts ``n_planned, n_done, n_ok, n_failed,
n_nonfinite, n_missing, n_timeout, n_preempted, n_corrupt`` and ``<metric>_median``. Thresholds
come from a YAML file (``conf/decision/default.yaml``) loaded into :class:`DecisionRule`.

The walk (only what an outcome needs is required):

1. Stage A needs the control, arch_fix and opt_fix arms.
2. Arch fix passes Stage A -> Stage B needs control and arch_fix; passing there is **gold**.
3. Otherwise, opt fix passes Stage A -> Stage B needs control and opt_fix; passing there is
   **silver**, failing is **pivot**.
4. Opt fix fails Stage A (and gold is out) -> **pivot**: no fix qualifies.
5. An input that is needed and absent (or, with ``require_complete``, has unfinished runs)
   -> **incomplete**, listing exactly what is missing; the verdict on the finished runs is
   given as ``provisional``.

Comparisons: failure rate = failed / done (done = ok + failed; unfinished runs are not in the
denominator). Against the control a candidate must be strictly lower when
``strictly_lower_failure_rate`` (ties with other arms are allowed: "lowest" includes ties).
A median is trusted only with ``min_successful_seeds`` ok runs: a candidate below it fails its
loss check; a comparator below it is skipped (an arm that never succeeds cannot be beaten on
loss); a control below it makes the opt fix's loss regression unmeasurable, which passes (noted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

ROLES = ("control", "arch_fix", "opt_fix")
STAGES = ("A", "B")
DEFAULT_RULE = Path(__file__).resolve().parents[3] / "conf" / "decision" / "default.yaml"
OUTCOMES = ("gold", "silver", "pivot", "incomplete")


# --- the rule --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    sweep_contains: str
    depth: int | None


@dataclass(frozen=True)
class ArchFixRule:
    max_nonfinite: int
    compare_with: str  # "roles" | "all"
    strictly_lower_failure_rate: bool


@dataclass(frozen=True)
class OptFixRule:
    max_median_loss_regression: float
    strictly_lower_failure_rate: bool
    max_nonfinite: int | None


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds and role mapping of the decision rule (see ``conf/decision/default.yaml``)."""

    metric: str
    min_successful_seeds: int
    require_complete: bool
    roles: dict[str, dict[str, Any]]
    stages: dict[str, StageSpec]
    arch_fix: ArchFixRule
    opt_fix: OptFixRule


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown, absent = set(data) - names, names - set(data)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(names)}")
    if absent:
        raise ValueError(f"{where}: missing key(s) {sorted(absent)}")
    return data


def rule_from_dict(data: dict) -> DecisionRule:
    """Validate a rule mapping (unknown, missing or malformed keys raise ``ValueError``)."""
    d = dict(_build(DecisionRule, data, "decision rule"))
    roles = d["roles"]
    if not isinstance(roles, dict) or set(roles) != set(ROLES):
        raise ValueError(f"decision rule: roles must be exactly {list(ROLES)}, got {roles!r}")
    for name, spec in roles.items():
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"decision rule: roles.{name} must be a non-empty mapping")
    stages = d["stages"]
    if not isinstance(stages, dict) or set(stages) != set(STAGES):
        raise ValueError(f"decision rule: stages must be exactly {list(STAGES)}")
    d["stages"] = {k: StageSpec(**_build(StageSpec, v, f"stages.{k}")) for k, v in stages.items()}
    d["arch_fix"] = ArchFixRule(**_build(ArchFixRule, d["arch_fix"], "arch_fix"))
    d["opt_fix"] = OptFixRule(**_build(OptFixRule, d["opt_fix"], "opt_fix"))
    if d["arch_fix"].compare_with not in ("roles", "all"):
        raise ValueError("decision rule: arch_fix.compare_with must be 'roles' or 'all'")
    if not isinstance(d["min_successful_seeds"], int) or d["min_successful_seeds"] < 1:
        raise ValueError("decision rule: min_successful_seeds must be an int >= 1")
    reg = d["opt_fix"].max_median_loss_regression
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or reg < 0:
        raise ValueError("decision rule: opt_fix.max_median_loss_regression must be >= 0")
    return DecisionRule(**d)


def load_rule(path: str | Path = DEFAULT_RULE) -> DecisionRule:
    """Read and validate a decision-rule YAML file."""
    with open(path, encoding="utf-8") as fh:
        return rule_from_dict(yaml.safe_load(fh))


# --- stages and roles ------------------------------------------------------------------------
def stage_of(sweep: str | None, depth: Any, rule: DecisionRule) -> str:
    """``"A"``/``"B"`` by sweep name (contains the stage's text), else by depth; else ``""``."""
    name = (sweep or "").lower()
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


# --- checks ----------------------------------------------------------------------------------
@dataclass
class Check:
    criterion: str
    passed: bool
    detail: str


@dataclass
class Verdict:
    """Whether one fix passes one stage, and the checks (with numbers) that say so."""

    stage: str
    subject: str  # "arch_fix" | "opt_fix"
    arm: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def fmt(x: Any) -> str:
    """Four significant digits; ``n/a`` for None/NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _n(row: dict, key: str) -> int:
    v = row.get(key)
    return 0 if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def loss_of(row: dict, rule: DecisionRule) -> float | None:
    """Median of the rule's metric over ok runs; None when below ``min_successful_seeds``."""
    med = row.get(f"{rule.metric}_median")
    if _n(row, "n_ok") < rule.min_successful_seeds or med is None or not math.isfinite(med):
        return None
    return float(med)


def rate_of(row: dict) -> float | None:
    """Failure rate failed / done; None with no finished run."""
    done = _n(row, "n_done")
    return _n(row, "n_failed") / done if done else None


def _rate_text(row: dict) -> str:
    return f"{_n(row, 'n_failed')}/{_n(row, 'n_done')}"


def _label(row: dict) -> str:
    return str(row.get("arm_label"))


def _compare(value: float, others: list[tuple[dict, float | None]], control: dict,
             strict_control: bool) -> tuple[bool, list[str]]:
    """value below each defined other (strictly below the control if asked)."""
    ok, skipped = True, []
    for row, other in others:
        if other is None:
            skipped.append(_label(row))
        elif row is control and strict_control:
            ok &= value < other
        else:
            ok &= value <= other
    return ok, skipped


def _loss_check(cand: dict, comps: list[dict], control: dict, rule: DecisionRule,
                strict: bool) -> Check:
    name = f"lowest median {rule.metric}"
    mine = loss_of(cand, rule)
    if mine is None:
        return Check(name, False, f"{_n(cand, 'n_ok')} ok runs < {rule.min_successful_seeds}: "
                                  "median not trusted")
    others = [(r, loss_of(r, rule)) for r in comps]
    passed, skipped = _compare(mine, others, control, strict)
    parts = [f"{fmt(mine)} ({_n(cand, 'n_ok')} ok)"] + [
        f"{_label(r)} {fmt(v)} ({_n(r, 'n_ok')} ok)" for r, v in others if v is not None]
    detail = parts[0] + (" vs " + ", ".join(parts[1:]) if parts[1:] else "")
    if skipped:
        detail += f"; not compared (< {rule.min_successful_seeds} ok runs): {', '.join(skipped)}"
    return Check(name, passed, detail)


def _rate_check(cand: dict, comps: list[dict], control: dict, strict: bool,
                name: str) -> Check:
    mine = rate_of(cand)
    if mine is None:
        return Check(name, False, "no finished run")
    others = [(r, rate_of(r)) for r in comps]
    passed, skipped = _compare(mine, others, control, strict)
    detail = f"{_rate_text(cand)} = {fmt(mine)} vs " + ", ".join(
        f"{_label(r)} {_rate_text(r)} = {fmt(v)}" for r, v in others if v is not None)
    if skipped:
        detail += f"; no finished run: {', '.join(skipped)}"
    if strict:
        detail += " (strictly below control required)"
    return Check(name, passed, detail)


def _nonfinite_check(row: dict, limit: int) -> Check:
    n = _n(row, "n_nonfinite")
    return Check("nonfinite runs", n <= limit, f"{n} nonfinite (limit {limit})")


def arch_fix_stage_a(roles: dict[str, dict], rule: DecisionRule,
                     stage_rows: list[dict] | None = None) -> Verdict:
    """Arch fix in Stage A: lowest median loss, no NaN runs, lowest failure rate."""
    cand, control, r = roles["arch_fix"], roles["control"], rule.arch_fix
    if r.compare_with == "all" and stage_rows is not None:
        comps = [x for x in stage_rows if x is not cand]
    else:
        comps = [x for x in (control, roles.get("opt_fix")) if x is not None]
    comps = sorted(comps, key=lambda x: x is not control)  # control first
    return Verdict("A", "arch_fix", _label(cand), [
        _loss_check(cand, comps, control, rule, strict=True),
        _nonfinite_check(cand, r.max_nonfinite),
        _rate_check(cand, comps, control, r.strictly_lower_failure_rate, "lowest failure rate"),
    ])


def arch_fix_stage_b(roles: dict[str, dict], rule: DecisionRule) -> Verdict:
    """Arch fix in Stage B: failure rate below the deep control's, no NaN runs."""
    cand, control, r = roles["arch_fix"], roles["control"], rule.arch_fix
    return Verdict("B", "arch_fix", _label(cand), [
        _nonfinite_check(cand, r.max_nonfinite),
        _rate_check(cand, [control], control, r.strictly_lower_failure_rate,
                    "failure rate below control"),
    ])


def opt_fix_stage(roles: dict[str, dict], rule: DecisionRule, stage: str) -> Verdict:
    """Opt fix in a stage: failure rate below control, median loss regression within bound."""
    cand, control, r = roles["opt_fix"], roles["control"], rule.opt_fix
    checks = [_rate_check(cand, [control], control, r.strictly_lower_failure_rate,
                          "failure rate below control")]
    name = f"median {rule.metric} regression <= {fmt(float(r.max_median_loss_regression))}"
    mine, ref = loss_of(cand, rule), loss_of(control, rule)
    if mine is None:
        checks.append(Check(name, False, f"{_n(cand, 'n_ok')} ok runs < "
                                         f"{rule.min_successful_seeds}: median not trusted"))
    elif ref is None:
        checks.append(Check(name, True, f"control has {_n(control, 'n_ok')} ok runs < "
                                        f"{rule.min_successful_seeds}: regression not measurable"))
    else:
        # mine <= ref * (1 + bound) rather than mine / ref - 1 <= bound: exact at the bound
        passed = mine <= ref * (1.0 + r.max_median_loss_regression)
        rel = mine / ref - 1.0 if ref else math.inf
        checks.append(Check(name, passed, f"{fmt(mine)} vs control {fmt(ref)}: {rel:+.1%}"))
    if r.max_nonfinite is not None:
        checks.append(_nonfinite_check(cand, r.max_nonfinite))
    return Verdict(stage, "opt_fix", _label(cand), checks)


def evaluate_stage_a(roles: dict[str, dict], rule: DecisionRule,
                     stage_rows: list[dict] | None = None) -> dict[str, Verdict]:
    """Both fixes' Stage A verdicts (roles must hold control, arch_fix and opt_fix)."""
    return {"arch_fix": arch_fix_stage_a(roles, rule, stage_rows),
            "opt_fix": opt_fix_stage(roles, rule, "A")}


def evaluate_stage_b(roles: dict[str, dict], rule: DecisionRule) -> dict[str, Verdict]:
    """The Stage B verdicts of whichever fixes have an arm there (control required)."""
    out = {}
    if "arch_fix" in roles:
        out["arch_fix"] = arch_fix_stage_b(roles, rule)
    if "opt_fix" in roles:
        out["opt_fix"] = opt_fix_stage(roles, rule, "B")
    return out


# --- the walk --------------------------------------------------------------------------------
@dataclass
class Decision:
    outcome: str  # gold | silver | pivot | incomplete
    because: str  # one sentence
    verdicts: list[Verdict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    provisional: str | None = None  # outcome on the finished runs when incomplete
    notes: list[str] = field(default_factory=list)
    roles: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> role -> label


def _unfinished(row: dict) -> str | None:
    todo = _n(row, "n_planned") - _n(row, "n_done")
    if todo <= 0:
        return None
    kinds = [f"{_n(row, f'n_{k}')} {k}" for k in ("missing", "timeout", "preempted", "corrupt")
             if _n(row, f"n_{k}")]
    return f"{todo} of {_n(row, 'n_planned')} planned runs unfinished ({', '.join(kinds)})"


class _Walk:
    def __init__(self, by_stage, rule, control, enforce_complete):
        self.by_stage, self.rule, self.control = by_stage, rule, control
        self.enforce = enforce_complete
        self.missing: list[str] = []
        self.verdicts: list[Verdict] = []

    def need(self, stage: str, wanted: tuple[str, ...]) -> dict[str, dict] | None:
        rows = self.by_stage.get(stage, [])
        spec = self.rule.stages[stage]
        if not rows:
            self.missing.append(f"Stage {stage}: no records (no sweep named "
                                f"*{spec.sweep_contains}* and no arm at depth {spec.depth}); "
                                "needs " + ", ".join(wanted))
            return None
        roles, problems = resolve_roles(rows, self.rule, self.control)
        before = len(self.missing)
        for role in wanted:
            if role in problems:
                self.missing.append(f"Stage {stage}: {problems[role]}")
            elif not _n(roles[role], "n_done"):
                self.missing.append(f"Stage {stage} {role} '{_label(roles[role])}': no finished "
                                    f"run yet ({_n(roles[role], 'n_planned')} planned)")
            elif self.enforce and (todo := _unfinished(roles[role])):
                self.missing.append(f"Stage {stage} {role} '{_label(roles[role])}': {todo}")
        return roles if len(self.missing) == before else None

    def run(self) -> tuple[str | None, str]:
        a = self.need("A", ROLES)
        if a is None:
            return None, ""
        va = evaluate_stage_a(a, self.rule, self.by_stage["A"])
        self.verdicts += [va["arch_fix"], va["opt_fix"]]
        arch_b_failed = False
        if va["arch_fix"].passed:
            b = self.need("B", ("control", "arch_fix"))
            if b is None:
                return None, ""
            vb = arch_fix_stage_b(b, self.rule)
            self.verdicts.append(vb)
            if vb.passed:
                return "gold", "the arch fix passes Stage A and Stage B"
            arch_b_failed = True
        arch_why = "fails Stage B" if arch_b_failed else "fails Stage A"
        if not va["opt_fix"].passed:
            return "pivot", f"the arch fix {arch_why} and the opt fix fails Stage A"
        b = self.need("B", ("control", "opt_fix"))
        if b is None:
            return None, ""
        vb = opt_fix_stage(b, self.rule, "B")
        self.verdicts.append(vb)
        if vb.passed:
            return "silver", f"the arch fix {arch_why}; the opt fix passes Stage A and Stage B"
        return "pivot", f"the arch fix {arch_why} and the opt fix fails Stage B"


def _notes(by_stage: dict[str, list[dict]], rule: DecisionRule, control: str | None) -> list[str]:
    notes = []
    for stage in STAGES:
        roles, _ = resolve_roles(by_stage.get(stage, []), rule, control)
        c = roles.get("control")
        if c is not None and _n(c, "n_done") and _n(c, "n_failed") == 0:
            notes.append(f"Stage {stage}: the control '{_label(c)}' never failed "
                         f"(0/{_n(c, 'n_done')}): no fix can show a lower failure rate there, "
                         "the instability is not reproduced at this depth.")
    return notes


def decide(rows: list[dict], rule: DecisionRule, control: str | None = None) -> Decision:
    """Evaluate the decision rule on summary rows (one per arm, with a ``stage`` key)."""
    by_stage = {s: [r for r in rows if r.get("stage") == s] for s in STAGES}
    roles = {}
    for stage in STAGES:
        found, _ = resolve_roles(by_stage[stage], rule, control)
        if found:
            roles[stage] = {k: _label(v) for k, v in found.items()}
    walk = _Walk(by_stage, rule, control, rule.require_complete)
    outcome, because = walk.run()
    notes = _notes(by_stage, rule, control)
    if outcome is not None:
        if not by_stage["B"]:
            notes.append("Stage B: no records; this outcome does not depend on them "
                         "(decided by Stage A alone)")
        return Decision(outcome, because, walk.verdicts, [], None, notes, roles)
    loose = _Walk(by_stage, rule, control, enforce_complete=False)
    provisional, why = loose.run()
    because = "needed inputs are missing or unfinished"
    if provisional:
        because += f"; on the finished runs: {provisional} ({why})"
    missing = walk.missing + [m for m in loose.missing if m not in walk.missing]
    b_listed = any(m.startswith("Stage B") for m in missing)
    if provisional is None and not by_stage["B"] and not b_listed:
        missing.append("Stage B: no records yet (needed unless both fixes fail Stage A)")
    return Decision("incomplete", because, loose.verdicts, missing, provisional, notes, roles)
