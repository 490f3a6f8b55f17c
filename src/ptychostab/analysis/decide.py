"""The study's verdict (strategy section 5) as a table of gate verdicts.

1. Per stage, the arms playing control / arch_fix / opt_fix are found (:mod:`.rule`) and read
   from their runs into :class:`~ptychostab.analysis.gates.ArmEvidence` (counts and the finite
   values of the loss, each SSIM and each run's max grad norm).
2. The gates (:mod:`.gates`: pass / fail / inconclusive / untestable, each with its estimate and
   one-sided bounds at the rule's ``evidence_level``) are evaluated for both fixes, Stage B's
   conditions included; each fix's gates combine into one verdict (:func:`.gates.combine`).
3. The premise (:func:`.gates.premise`: present / shown absent / not settled) and the protocol
   (each stage against the rule's declared one, compared arms against each other, every seed
   of an arm the same) join them as inputs of :data:`OUTCOME_TABLE`: first matching row wins.
4. Robustness: the outcome is re-evaluated with each role arm-stage's unsettled runs all counted
   as instability failures, or as successes at the arm's worst observed values, or at its best
   (at most 3^6 cases). Several outcomes -> INCOMPLETE, naming the runs that settle it.
5. An INCOMPLETE outcome carries the provisional outcome (the outcome with unsettled runs left
   out, else the point-estimate reading) and what to run: seeds per arm for each inconclusive
   gate, seeds for an unsettled premise, the runs to rerun or retry.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from ptychostab.analysis import gates, protocol, stats
from ptychostab.analysis.roles import Roles
from ptychostab.analysis.rule import (  # noqa: F401  (re-exported: the aggregator's API)
    CLIP,
    DEFAULT_RULE,
    OUTSIDE,
    ROLES,
    STAGES,
    DecisionRule,
    fmt,
    load_rule,
    matches,
    resolve_roles,
    rule_from_dict,
    stage_of,
    values_match,
)
from ptychostab.runs import records

GOLD, SILVER, PIVOT = "GOLD", "SILVER", "PIVOT"
NOT_REPRODUCED, INCOMPLETE = "NOT REPRODUCED", "INCOMPLETE"
OUTCOMES = (GOLD, SILVER, PIVOT, NOT_REPRODUCED, INCOMPLETE)
MEANING = {  # strategy section 5 and issue 10
    GOLD: "stable_hybrid becomes the default FNO architecture",
    SILVER: "AGC becomes the mandatory training policy for FNO models",
    PIVOT: "neither fix qualifies: investigate LayerScale (explicit depth damping)",
    NOT_REPRODUCED: "the control is shown not to fail at the premise's rate at these depths "
                    "and epochs: the premise did not appear, no fix is chosen",
    INCOMPLETE: "not decided yet: see what to run",
}
ANY = "*"
P, A, N = gates.PRESENT, gates.ABSENT, gates.NOT_SETTLED
PS, FL, IN, UT = gates.PASS, gates.FAIL, gates.INCONCLUSIVE, gates.UNTESTABLE
#: (both stages, records agree, protocol, premise, GOLD, SILVER) -> outcome; first match wins
OUTCOME_TABLE = (
    ("no", ANY, ANY, ANY, ANY, ANY, INCOMPLETE),
    ("yes", "no", ANY, ANY, ANY, ANY, INCOMPLETE),
    ("yes", "yes", "no", ANY, ANY, ANY, INCOMPLETE),
    ("yes", "yes", "untestable", ANY, ANY, ANY, INCOMPLETE),
    ("yes", "yes", "yes", N, ANY, ANY, INCOMPLETE),
    ("yes", "yes", "yes", A, ANY, ANY, NOT_REPRODUCED),
    ("yes", "yes", "yes", P, PS, ANY, GOLD),
    ("yes", "yes", "yes", P, IN, ANY, INCOMPLETE),
    ("yes", "yes", "yes", P, UT, ANY, INCOMPLETE),
    ("yes", "yes", "yes", P, FL, PS, SILVER),
    ("yes", "yes", "yes", P, FL, IN, INCOMPLETE),
    ("yes", "yes", "yes", P, FL, UT, INCOMPLETE),
    ("yes", "yes", "yes", P, FL, FL, PIVOT),
)
TABLE_HEADER = ("both stages", "records agree", "protocol", "premise", "GOLD gates (arch fix)",
                "SILVER gates (opt fix)", "outcome")
#: the values each input column takes (the table is total over them)
COLUMN_VALUES = (("yes", "no"), ("yes", "no"), ("yes", "no", "untestable"),
                 gates.PREMISE_VALUES, gates.VERDICTS, gates.VERDICTS)
#: a run record's field naming a conflicting duplicate (same arm id and seed, other results)
CONFLICT = "duplicate_conflict"


def outcome_of(*key: str) -> str:
    """The first row of :data:`OUTCOME_TABLE` that matches the six inputs."""
    for row in OUTCOME_TABLE:
        if all(want in (ANY, have) for want, have in zip(row[:-1], key, strict=True)):
            return row[-1]
    raise AssertionError(f"no outcome row for {key}")  # the table is total


def possible_outcomes(premise: str, gold: str, silver: str) -> list[str]:
    """Outcomes reachable when every open input is settled either way (stages present,
    records agreeing, protocol shared): a premise not settled may be present or absent, an
    inconclusive or untestable fix may pass or fail."""
    pv = [P, A] if premise == N else [premise]
    gv = [PS, FL] if gold in (IN, UT) else [gold]
    sv = [PS, FL] if silver in (IN, UT) else [silver]
    found = {outcome_of("yes", "yes", "yes", p, g, s) for p in pv for g in gv for s in sv}
    return [o for o in OUTCOMES if o in found]


# --- reading runs ----------------------------------------------------------------------------
def _n(row: dict, key: str) -> int:
    v = row.get(key)
    return 0 if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def _f(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else math.nan


def arm_evidence(label: str, stage: str, runs: Iterable[dict],
                 rule: DecisionRule) -> gates.ArmEvidence:
    """The gates' view of one arm-stage from its run records (``status``, ``seed``, the
    rule's metric and SSIMs, :data:`.gates.GRAD`). An ok run with a non-finite loss or SSIM
    is unsettled (and counts as nonfinite in the nonfinite limits)."""
    metrics = (rule.metric, *rule.ssim_metrics)
    values: dict[str, list[float]] = {m: [] for m in (*metrics, gates.GRAD)}
    n_ok = n_inst = n_nf = n_ok_nf = 0
    unsettled = []
    for r in sorted(runs, key=lambda x: (str(type(x.get("seed"))), x.get("seed"))):
        status, seed = r.get("status"), r.get("seed")
        if status == records.OK:
            got = {m: _f(r.get(m)) for m in metrics}
            bad = [m for m, v in got.items() if not math.isfinite(v)]
            if bad:
                n_ok_nf += 1
                unsettled.append(f"seed={seed} (ok, non-finite {', '.join(bad)})")
                continue
            n_ok += 1
            for m, v in got.items():
                values[m].append(v)
            g = _f(r.get(gates.GRAD))
            if math.isfinite(g):
                values[gates.GRAD].append(g)
        elif records.is_instability(status):
            n_inst += 1
            n_nf += status == "nonfinite"
        else:
            unsettled.append(f"seed={seed} ({status})")
    return gates.ArmEvidence(label, stage, n_ok, n_inst, n_nf, tuple(unsettled), n_ok_nf,
                             {m: tuple(v) for m, v in values.items()},
                             higher_is_better=frozenset(rule.ssim_metrics))


def arm_of(row: dict, rule: DecisionRule) -> gates.ArmEvidence:
    """The gates' view of a summary row alone (counts only, no values: the loss, SSIM and
    grad-norm gates are then untestable): for callers without the run records."""
    runs = row.get("unsettled_runs") or ""
    return gates.ArmEvidence(str(row.get("arm_label")), str(row.get("stage")), _n(row, "n_ok"),
                             _n(row, "n_instability"), _n(row, "n_nonfinite"),
                             tuple(r for r in str(runs).split("; ") if r),
                             higher_is_better=frozenset(rule.ssim_metrics))


# --- gates of both fixes ---------------------------------------------------------------------
#: (stage, role) -> arm
Arms = dict[tuple[str, str], gates.ArmEvidence]


@dataclass(frozen=True)
class Context:
    """What the gates need beside the arms: the rule, the other arms of each stage
    (``compare_with: all``), each role arm-stage's grad-norm bound, and whether to estimate
    the seeds that settle an inconclusive gate."""

    rule: DecisionRule
    others: dict[str, list[gates.ArmEvidence]] = field(default_factory=dict)
    grad_bounds: dict[tuple[str, str], float | None] = field(default_factory=dict)
    settle: bool = False


def _missing(name: str, stage: str, subject: str, what: str) -> gates.Gate:
    return gates.missing_gate(name, stage, subject, f"no {what} in stage {stage}")


def _stage_b_gates(arms: Arms, ctx: Context, role: str) -> list[gates.Gate]:
    """Stage B's conditions for a fix (strategy section 2: no NaNs, grad_norm bounded,
    matches or beats the Stage A val_loss/SSIM)."""
    rule, s = ctx.rule, role
    a, b = arms.get(("A", s)), arms.get(("B", s))
    out = []
    if rule.stage_b.max_nonfinite is not None:
        out.append(gates.nonfinite_gate(b, rule.stage_b.max_nonfinite, s) if b is not None
                   else _missing("nonfinite runs", "B", s, f"{s} arm"))
    out.append(gates.grad_gate(b, a, ctx.grad_bounds.get(("B", s)), rule.stage_b.grad_norm_factor,
                               s) if b is not None else _missing("grad norm bounded", "B", s,
                                                                 f"{s} arm"))
    for metric in (rule.metric, *rule.ssim_metrics):
        name = f"deep median {metric}"
        if a is None or b is None:
            out.append(_missing(name, "B" if b is None else "A", s, f"{s} arm"))
            continue
        out.append(gates.regression_gate(
            b, a, metric, rule.min_successful_seeds, rule.evidence_level, rule.stage_b_tolerance,
            rule.point, s, ctx.settle, name=name, higher_is_better=metric in rule.ssim_metrics,
            reference_beaten=False, against="Stage A"))
    return out


def _rate(fix, ctrl, ctx: Context, stage: str, subject: str, what: str) -> gates.Gate:
    if fix is None or ctrl is None:
        return _missing("failure rate", stage, subject, what)
    r = ctx.rule
    return gates.failure_rate_gate(fix, ctrl, r.evidence_level, r.min_effect.failure_rate,
                                   r.point, subject, ctx.settle)


def gold_gates(arms: Arms, ctx: Context) -> list[gates.Gate]:
    """The arch fix's gates: Stage A median loss below the control's (and every other arm's
    with compare_with=all), failure rate below the control's (and the others') in both
    stages, at most ``arch_fix.max_nonfinite`` nonfinite runs in Stage A, and Stage B's
    conditions."""
    rule, s = ctx.rule, "arch_fix"
    a, ca = arms.get(("A", s)), arms.get(("A", "control"))
    what = "arch_fix or control arm"
    out = [gates.loss_gate(a, ca, rule.metric, rule.min_successful_seeds, rule.evidence_level,
                           rule.min_effect.loss, rule.point, s, ctx.settle)
           if a is not None and ca is not None else _missing("median loss below", "A", s, what)]
    for other in ctx.others.get("A", []) if a is not None else []:
        out.append(gates.loss_gate(a, other, rule.metric, rule.min_successful_seeds,
                                   rule.evidence_level, rule.min_effect.loss, rule.point, s,
                                   ctx.settle))
    if rule.arch_fix.max_nonfinite is not None:
        out.append(gates.nonfinite_gate(a, rule.arch_fix.max_nonfinite, s) if a is not None
                   else _missing("nonfinite runs", "A", s, "arch_fix arm"))
    for stage in STAGES:
        fix = arms.get((stage, s))
        out.append(_rate(fix, arms.get((stage, "control")), ctx, stage, s, what))
        for other in ctx.others.get(stage, []) if fix is not None else []:
            out.append(_rate(fix, other, ctx, stage, s, what))
    return out + _stage_b_gates(arms, ctx, s)


def silver_gates(arms: Arms, ctx: Context) -> list[gates.Gate]:
    """The opt fix's gates, in each stage: failure rate below the control's, median loss at
    most ``max_median_loss_regression`` above the control's; Stage A nonfinite runs if
    ``opt_fix.max_nonfinite`` is set; and Stage B's conditions."""
    rule, s, r = ctx.rule, "opt_fix", ctx.rule.opt_fix
    what = "opt_fix or control arm"
    out = []
    for stage in STAGES:
        fix, ctrl = arms.get((stage, s)), arms.get((stage, "control"))
        out.append(_rate(fix, ctrl, ctx, stage, s, what))
        out.append(gates.regression_gate(
            fix, ctrl, rule.metric, rule.min_successful_seeds, rule.evidence_level,
            r.max_median_loss_regression, rule.point, s, ctx.settle)
            if fix is not None and ctrl is not None else
            _missing("median loss regression", stage, s, what))
    if r.max_nonfinite is not None:
        fix = arms.get(("A", s))
        out.append(gates.nonfinite_gate(fix, r.max_nonfinite, s) if fix is not None
                   else _missing("nonfinite runs", "A", s, "opt_fix arm"))
    return out + _stage_b_gates(arms, ctx, s)


@dataclass
class Evaluation:
    outcome: str
    inputs: tuple[str, ...]
    gates: list[gates.Gate]
    gold: tuple[str, str]
    silver: tuple[str, str]
    premise: gates.Premise
    point: tuple[str, str, str]  # point verdicts: premise, GOLD, SILVER


def evaluate(arms: Arms, ctx: Context, both: str, agree: str, shared: str) -> Evaluation:
    """Gates, fix verdicts, the premise and the outcome of one assignment of the runs
    (pure)."""
    rule = ctx.rule
    gg, sg = gold_gates(arms, ctx), silver_gates(arms, ctx)
    gold, silver = gates.combine(gg), gates.combine(sg)
    prem = gates.premise({s: arms.get((s, "control")) for s in STAGES},
                         rule.premise_failure_rate, rule.evidence_level, rule.point)
    inputs = (both, agree, shared, prem.value, gold[0], silver[0])
    point = (prem.point, gates.combine(gg, point=True)[0], gates.combine(sg, point=True)[0])
    return Evaluation(outcome_of(*inputs), inputs, gg + sg, gold, silver, prem, point)


# --- the decision ----------------------------------------------------------------------------
@dataclass
class Decision:
    outcome: str
    because: str
    gates: list[gates.Gate] = field(default_factory=list)
    fixes: dict[str, tuple[str, str]] = field(default_factory=dict)  # fix -> (verdict, why)
    provisional: str | None = None  # when INCOMPLETE: the outcome(s) the data point to
    provisional_basis: str = ""  # how the provisional outcome was read
    to_run: list[str] = field(default_factory=list)  # what settles an INCOMPLETE outcome
    notes: list[str] = field(default_factory=list)
    roles: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> role -> label
    mismatches: list[str] = field(default_factory=list)  # binding or allowed, every kind
    study_mismatches: list[str] = field(default_factory=list)
    protocol_unknown: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # duplicate runs that disagree
    cases: list[tuple[str, str]] = field(default_factory=list)  # (assignment, outcome)
    inputs: tuple[str, ...] = ()
    premise: str = ""  # the premise column's value
    premise_text: str = ""
    other_fix: list[str] = field(default_factory=list)  # the other fix, in view
    evidence: str = "interval"
    level: float = 0.95


def retry_command(sweep: str) -> str:
    return f"python train.py -m +experiment={sweep} retry=[oom,exception]"


def _settle_lines(rows: dict[tuple[str, str], dict], keys: list[tuple[str, str]],
                  arms: Arms) -> list[str]:
    out = []
    for key in keys:
        row, arm = rows[key], arms[key]
        runs = ", ".join(arm.unsettled) or f"{arm.n_unsettled} run(s)"
        line = (f"Stage {key[0]} {key[1]} '{arm.label}': settle {arm.n_unsettled} run(s) "
                f"({runs}) by rerunning sweep `{row.get('sweep')}` (resumes or retries "
                "unfinished runs)")
        if any(k in runs for k in ("(oom", "(exception")):
            line += f"; final oom/exception runs: `{retry_command(str(row.get('sweep')))}`"
        if "(ok, non-finite" in runs:
            line += ("; an ok run with a non-finite metric is final: rerun it in a new sweep "
                     "or find why its metric is not finite")
        out.append(line)
    return out


def robustness(arms: Arms, ctx: Context, both: str, agree: str, shared: str
               ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every way of counting the unsettled runs, per role arm-stage (``failed``, or successes
    at the arm's ``worst`` or ``best`` observed values): ``(cases, sensitive keys)``; cases as
    ``(assignment text, outcome)``."""
    keys = sorted(k for k, a in arms.items() if a.n_unsettled)
    ctx = replace(ctx, settle=False)
    results = {}
    for modes in itertools.product(gates.COUNTED, repeat=len(keys)):
        assigned = dict(arms)
        for k, how in zip(keys, modes, strict=True):
            assigned[k] = arms[k].counted(how)
        results[modes] = evaluate(assigned, ctx, both, agree, shared).outcome
    sensitive = []
    for i, k in enumerate(keys):
        if any(results[m] != results[m[:i] + (alt,) + m[i + 1:]]
               for m in results for alt in gates.COUNTED):
            sensitive.append(k)
    cases = [(", ".join(f"{k[0]}/{k[1]} {how}" for k, how in zip(keys, m, strict=True))
              or "(none unsettled)", o) for m, o in results.items()]
    return cases, sensitive


def _because(ev: Evaluation) -> str:
    out = ev.outcome
    if out == NOT_REPRODUCED:
        return ev.premise.text + "; no fix is chosen"
    arch, opt = f"the arch fix {ev.gold[1]}", f"the opt fix {ev.silver[1]}"
    if out == GOLD:
        return arch
    if out == SILVER:
        return f"{arch}; {opt}"
    if out == PIVOT:
        return f"{arch}; {opt}; the premise is present ({ev.premise.text})"
    return _open_inputs(ev)


def _open_inputs(ev: Evaluation) -> str:
    """Why the outcome table says INCOMPLETE, input by input."""
    both, agree, shared, prem, gold, silver = ev.inputs
    parts = []
    if both == "no":
        parts.append("a stage has no records")
    if agree == "no":
        parts.append("the same run is recorded twice with different results")
    if shared == "no":
        parts.append("the protocol differs from the study's or between compared arms")
    if shared == "untestable":
        parts.append("a protocol cannot be checked (records without a manifest)")
    if prem == N:
        parts.append("the premise is not settled")
    if gold in (IN, UT):
        parts.append(f"the arch fix {ev.gold[1]}")
    elif gold == FL and silver in (IN, UT):
        parts.append(f"the arch fix {ev.gold[1]}; the opt fix {ev.silver[1]}")
    return "; ".join(parts) or "needed inputs are missing"


def _compare_fixes(arms: Arms, rule: DecisionRule) -> list[str]:
    """The arch fix against the opt fix in each stage: failure rates and median losses."""
    out = []
    for stage in STAGES:
        a, o = arms.get((stage, "arch_fix")), arms.get((stage, "opt_fix"))
        if a is None or o is None:
            continue
        parts = [f"failure rate {a.label} {gates.rate_text(a)} vs {o.label} {gates.rate_text(o)}"]
        if a.n_done and o.n_done:
            est, lo, hi = stats.newcombe_difference(o.n_instability, o.n_done, a.n_instability,
                                                    a.n_done, rule.evidence_level)
            parts[-1] += f" (arch fix lower by {est:+.3g} [{lo:+.3g}, {hi:+.3g}])"
        av, ov = a.vals(rule.metric), o.vals(rule.metric)
        ratio, lo, hi = stats.median_ratio_bounds(av, ov, rule.evidence_level)
        if math.isfinite(ratio):
            parts.append(f"median {rule.metric} {fmt(gates._median(av))} vs "
                         f"{fmt(gates._median(ov))} (arch fix / opt fix {fmt(ratio)}"
                         + (f" [{fmt(lo)}, {fmt(hi)}]" if math.isfinite(lo) else "") + ")")
        out.append(f"Stage {stage}: " + "; ".join(parts))
    return out


def _other_fix(ev: Evaluation, arms: Arms, rule: DecisionRule) -> list[str]:
    lines = []
    if ev.outcome == GOLD:
        v, why = ev.silver
        lines.append("The opt fix (AGC) " + ("also qualified: its SILVER gates pass" if v == PS
                                             else f"did not qualify ({v}): {why}") + ".")
    elif ev.outcome == SILVER:
        lines.append(f"The arch fix (stable_hybrid) did not qualify: {ev.gold[1]}.")
    comparison = _compare_fixes(arms, rule)
    if comparison:
        lines.append("Arch fix vs opt fix (levels " f"{rule.evidence_level:.0%}, one-sided): "
                     + " | ".join(comparison))
    return lines


def _grad_bounds(roles: dict[str, dict[str, dict]], protocols: protocol.Protocols | None,
                 rule: DecisionRule) -> dict[tuple[str, str], float | None]:
    out = {}
    for stage, found in roles.items():
        declared = rule.stages[stage].protocol.get("failure.grad_norm_bound")
        for role, row in found.items():
            ap = protocol.as_arm_protocol((protocols or {}).get(protocol.stage_arm_key(row)))
            have = (ap.protocol or {}).get("failure.grad_norm_bound", declared)
            out[(stage, role)] = _f(have) if have is not None else None
    return out


def decide(rows: list[dict], rule: DecisionRule, control: str | None = None,
           protocols: protocol.Protocols | None = None, resolved: Roles | None = None,
           runs: Iterable[dict] | None = None) -> Decision:
    """Evaluate the decision rule.

    Parameters
    ----------
    rows : list of dict
        Summary rows, one per arm (``stage``, ``sweep``, ``arm_id``, ``arm_label`` and the arm
        fields the rule's role specs name).
    rule : DecisionRule
    control : str, optional
        Arm label(s) or id(s) playing the control (overrides the rule's control role).
    protocols : dict, optional
        ``(stage, sweep, arm_id) ->`` the arm's protocol (:class:`.protocol.ArmProtocol`, a
        flattened dict, or None). Without it no protocol can be checked: the protocol input is
        untestable (INCOMPLETE) unless the rule allows mismatches.
    resolved : Roles, optional
        The roles already resolved among these rows (:func:`.roles.resolve`, as the
        aggregation does once); default: resolved here (``control`` applies).
    runs : iterable of dict, optional
        The run records (``stage``, ``sweep``, ``arm_id``, ``seed``, ``status``, the rule's
        metric and SSIMs, ``grad_norm_pre_max``; ``duplicate_conflict`` when the same run was
        found twice with different results). Without them the gates see the rows' counts
        only (loss, SSIM and grad-norm gates untestable).
    """
    by_stage = {s: [r for r in rows if r.get("stage") == s] for s in STAGES}
    by_arm: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs or ():
        by_arm.setdefault(protocol.stage_arm_key(run), []).append(run)
    roles, arms, keyed, missing = {}, {}, {}, []
    for stage in STAGES:
        found, problems = (resolve_roles(by_stage[stage], rule, control) if resolved is None
                           else resolved.in_stage(stage, by_stage[stage]))
        roles[stage] = found
        if not by_stage[stage]:
            spec = rule.stages[stage]
            missing.append(f"Stage {stage}: no records (no sweep named *{spec.sweep_contains}*"
                           f" and no arm at depth {spec.depth}): run control, arch_fix and "
                           f"opt_fix there, at least {rule.min_successful_seeds} seeds each")
            continue
        missing += [f"Stage {stage}: {p}" for p in problems.values()]
        for role, row in found.items():
            arms[(stage, role)] = _evidence(row, by_arm, rule, runs is not None)
            keyed[(stage, role)] = row
    others: dict[str, list[gates.ArmEvidence]] = {}
    if rule.compare_with == "all":
        for stage in STAGES:
            taken = [roles[stage][r] for r in ("control", "arch_fix") if r in roles[stage]]
            others[stage] = [_evidence(r, by_arm, rule, runs is not None) for r in by_stage[stage]
                             if all(r is not t for t in taken) and roles[stage].get("arch_fix")]
    conflicts = sorted({f"Stage {k[0]} {k[1]} '{keyed[k].get('arm_label')}' seed="
                        f"{run.get('seed')}: {run.get(CONFLICT)}"
                        for k in keyed for run in by_arm.get(protocol.stage_arm_key(keyed[k]), [])
                        if run.get(CONFLICT)})
    check = protocol.protocol_check(roles, protocols, rule, by_stage)
    both = "yes" if all(by_stage[s] for s in STAGES) else "no"
    agree = "no" if conflicts else "yes"
    shared = check.column(rule)
    ctx = Context(rule, others, _grad_bounds(roles, protocols, rule), settle=True)
    base = evaluate(arms, ctx, both, agree, shared)
    d = Decision(base.outcome, _because(base), base.gates,
                 {"arch_fix": base.gold, "opt_fix": base.silver},
                 roles={s: {k: str(v.get("arm_label")) for k, v in r.items()}
                        for s, r in roles.items() if r},
                 mismatches=check.mismatches + check.study, study_mismatches=check.study,
                 protocol_unknown=check.unknown, conflicts=conflicts, inputs=base.inputs,
                 premise=base.premise.value, premise_text=base.premise.text,
                 evidence=rule.evidence, level=rule.evidence_level)
    d.notes += check.notes
    if rule.allow_protocol_mismatch and (check.mismatches or check.study or check.unknown):
        d.notes.append("protocol checks overridden by the rule's allow_protocol_mismatch switch: "
                       + " | ".join(check.mismatches + check.study + check.unknown))
    elif rule.demonstration and check.study:
        d.notes.append("demonstration rule: departures from the stages' declared protocols are "
                       "noted, not binding: " + " | ".join(check.study))
    d.notes += [f"runs with a non-finite metric counted as nonfinite and unsettled: Stage {k[0]} "
                f"{k[1]} '{a.label}': " + ", ".join(u for u in a.unsettled if "(ok," in u)
                for k, a in sorted(arms.items()) if a.n_ok_nonfinite]
    to_run = list(missing)
    to_run += [f"the same run recorded twice with different results (rerun it, or pass one "
               f"copy): {c}" for c in conflicts]
    if shared == "no":
        to_run += ["protocol differs (rerun with the study's protocol, or set "
                   "allow_protocol_mismatch): " + m
                   for m in check.mismatches + ([] if rule.demonstration else check.study)]
    if shared == "untestable":
        to_run += [f"protocol untestable (restore the manifests or rerun): {u}"
                   for u in check.unknown]
    if base.premise.value == N:
        to_run.append(f"premise not settled: {base.premise.text}")
    for g in base.gates:
        where = f"Stage {g.stage} {g.subject}: {g.name}" + (f" vs {g.against}" if g.against
                                                            else "")
        if g.verdict == UT and g.numbers != "-":
            to_run.append(f"{where} untestable: {g.reason}")
        elif g.verdict == IN:
            to_run.append(f"{where} inconclusive ({g.interval_text()}): {g.settle}")
    if rule.robust_to_unsettled:
        d.cases, sensitive = robustness(arms, ctx, both, agree, shared)
        outcomes = {o for _, o in d.cases} | {base.outcome}
        if len(outcomes) > 1:
            to_run += _settle_lines(keyed, sensitive or sorted(
                k for k, a in arms.items() if a.n_unsettled), arms)
            d.notes.append("robustness: the outcome changes with how the unsettled runs end ("
                           + ", ".join(sorted(outcomes)) + ")")
            if base.outcome != INCOMPLETE:
                d.outcome, d.because = INCOMPLETE, (
                    "the outcome depends on runs that ended otherwise (unsettled); with them "
                    f"left out it is {base.outcome} ({_because(base)})")
        elif any(a.n_unsettled for a in arms.values()):
            d.notes.append(f"robustness: {len(d.cases)} way(s) of counting the unsettled runs "
                           f"all give {base.outcome}" + (
                               ": it stands" if base.outcome != INCOMPLETE else ""))
    if d.outcome != INCOMPLETE:
        d.notes += [f"not needed for this outcome: {m}" for m in missing]
        d.other_fix = _other_fix(base, arms, rule)
    else:
        listed = " ".join(to_run)
        to_run += [line for line in _settle_lines(keyed, sorted(
            k for k, a in arms.items() if a.n_unsettled), arms)
            if line.split(":")[0] not in listed]  # every unsettled role run helps settle it
        d.to_run = to_run
        d.provisional, d.provisional_basis = _provisional(base, rule)
        d.other_fix = _other_fix(base, arms, rule)
    return d


def _evidence(row: dict, by_arm: dict, rule: DecisionRule, have_runs: bool
              ) -> gates.ArmEvidence:
    if not have_runs:
        return arm_of(row, rule)
    return arm_evidence(str(row.get("arm_label")), str(row.get("stage")),
                        by_arm.get(protocol.stage_arm_key(row), []), rule)


def _provisional(base: Evaluation, rule: DecisionRule) -> tuple[str, str]:
    """The outcome the data point to while it is INCOMPLETE: the table with the stages,
    records and protocol taken as fine (unsettled runs left out), else the point-estimate
    reading (what stays open read either way)."""
    _, _, _, prem, gold, silver = base.inputs
    settled = outcome_of("yes", "yes", "yes", prem, gold, silver)
    reading = "point estimates" if rule.point else f"{rule.evidence_level:.0%} intervals"
    if settled != INCOMPLETE:
        return settled, (f"{reading}, unsettled runs left out, if the stages, records and "
                         "protocol were in order")
    options = possible_outcomes(*base.point)
    return " or ".join(options), ("point estimates, the strategy's literal reading; unsettled "
                                  "runs left out" + ("; what has no data yet read either way"
                                                     if len(options) > 1 else ""))
