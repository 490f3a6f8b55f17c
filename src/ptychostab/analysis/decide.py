"""The study's verdict (strategy section 5) as a table of gate verdicts.

1. Per stage, the arms playing control / arch_fix / opt_fix are found (:mod:`.rule`) and read
   into :class:`~ptychostab.analysis.gates.ArmEvidence` (counts and trusted medians).
2. The gates (:mod:`.gates`, each pass / fail / neutral / untestable) are evaluated for both
   fixes; each fix's gates combine into one verdict (:func:`.gates.combine`).
3. :data:`OUTCOME_TABLE` maps (both stages present, protocol shared, control failed
   somewhere, GOLD verdict, SILVER verdict) to the outcome: first matching row wins.
4. Robustness: the outcome is re-evaluated with each role arm-stage's unsettled runs (every
   ending but ok and instability) all counted as instability failures or all as successes
   (at most 2^6 cases). Several outcomes -> INCOMPLETE, naming the runs that settle it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

from ptychostab.analysis import gates, protocol
from ptychostab.analysis.rule import (  # noqa: F401  (re-exported: the aggregator's API)
    CLIP,
    DEFAULT_RULE,
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

GOLD, SILVER, PIVOT = "GOLD", "SILVER", "PIVOT"
NOT_REPRODUCED, INCOMPLETE = "NOT REPRODUCED", "INCOMPLETE"
OUTCOMES = (GOLD, SILVER, PIVOT, NOT_REPRODUCED, INCOMPLETE)
MEANING = {  # strategy section 5 and issue 10
    GOLD: "stable_hybrid becomes the default FNO architecture",
    SILVER: "AGC becomes the mandatory training policy for FNO models",
    PIVOT: "neither fix qualifies: investigate LayerScale (explicit depth damping)",
    NOT_REPRODUCED: "the control never had an instability failure at these depths and epochs: "
                    "the premise did not appear, no fix is chosen",
    INCOMPLETE: "not decided yet: see what to run",
}
ANY = "*"
#: (both stages, protocol shared, control failed somewhere, GOLD, SILVER) -> outcome
OUTCOME_TABLE = (
    ("no", ANY, ANY, ANY, ANY, INCOMPLETE),
    ("yes", "no", ANY, ANY, ANY, INCOMPLETE),
    ("yes", "yes", "unknown", ANY, ANY, INCOMPLETE),
    ("yes", "yes", "no", ANY, ANY, NOT_REPRODUCED),
    ("yes", "yes", "yes", gates.PASS, ANY, GOLD),
    ("yes", "yes", "yes", gates.UNTESTABLE, ANY, INCOMPLETE),
    ("yes", "yes", "yes", gates.FAIL, gates.PASS, SILVER),
    ("yes", "yes", "yes", gates.FAIL, gates.UNTESTABLE, INCOMPLETE),
    ("yes", "yes", "yes", gates.FAIL, gates.FAIL, PIVOT),
)
TABLE_HEADER = ("both stages", "protocol shared", "control failed somewhere",
                "GOLD gates (arch fix)", "SILVER gates (opt fix)", "outcome")


def outcome_of(both: str, shared: str, control_failed: str, gold: str, silver: str) -> str:
    """The first row of :data:`OUTCOME_TABLE` that matches."""
    key = (both, shared, control_failed, gold, silver)
    for row in OUTCOME_TABLE:
        if all(want in (ANY, have) for want, have in zip(row[:5], key, strict=True)):
            return row[5]
    raise AssertionError(f"no outcome row for {key}")  # the table is total


def possible_outcomes(control_failed: str, gold: str, silver: str) -> list[str]:
    """Outcomes reachable when every unknown input is resolved either way (stages present,
    protocol shared)."""
    cf = ["yes", "no"] if control_failed == "unknown" else [control_failed]
    gv = [gates.PASS, gates.FAIL] if gold == gates.UNTESTABLE else [gold]
    sv = [gates.PASS, gates.FAIL] if silver == gates.UNTESTABLE else [silver]
    found = {outcome_of("yes", "yes", c, g, s) for c in cf for g in gv for s in sv}
    return [o for o in OUTCOMES if o in found]


# --- reading summary rows --------------------------------------------------------------------
def _n(row: dict, key: str) -> int:
    v = row.get(key)
    return 0 if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def _f(row: dict, key: str) -> float:
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def arm_of(row: dict, rule: DecisionRule) -> gates.ArmEvidence:
    """The gates' view of one summary row."""
    runs = row.get("unsettled_runs") or ""
    return gates.ArmEvidence(label=str(row.get("arm_label")), stage=str(row.get("stage")),
                 n_ok=_n(row, "n_ok"), n_instability=_n(row, "n_instability"),
                 n_nonfinite=_n(row, "n_nonfinite"), n_unsettled=_n(row, "n_unsettled"),
                 loss_n=_n(row, f"{rule.metric}_n"), loss_median=_f(row, f"{rule.metric}_median"),
                 ssim_n=_n(row, f"{rule.ssim_metric}_n"),
                 ssim_median=_f(row, f"{rule.ssim_metric}_median"),
                 unsettled_runs=tuple(r for r in str(runs).split("; ") if r))


# --- gates of both fixes ---------------------------------------------------------------------
#: (stage, role) -> arm; "others" of compare_with=all
Arms = dict[tuple[str, str], gates.ArmEvidence]


def _gate(inputs: list[gates.ArmEvidence | None], name: str, stage: str, subject: str,
          build) -> gates.Gate:
    if any(a is None for a in inputs):
        return gates.missing_gate(name, stage, subject, f"no {subject} or control arm in stage "
                                                    f"{stage}")
    return build(*inputs)


def gold_gates(arms: Arms, rule: DecisionRule,
               others: dict[str, list[gates.ArmEvidence]]) -> list[gates.Gate]:
    """The arch fix's gates: Stage A loss below the control's (and every arm's with
    compare_with=all), no nonfinite run in either stage, Stage B matches or beats its own
    Stage A loss and SSIM, failure rate in both stages."""
    s, m = "arch_fix", rule.min_successful_seeds
    a, b = arms.get(("A", s)), arms.get(("B", s))
    ca, cb = arms.get(("A", "control")), arms.get(("B", "control"))
    out = [_gate([a, ca], "median loss below control", "A", s, lambda x, c: gates.loss_gate(
        x, c, m, 0.0, True, "median loss below control", s))]
    for other in others.get("A", []):
        out.append(gates.loss_gate(a, other, m, 0.0, True, f"median loss below {other.label}", s))
    for stage, fix, ctrl in (("A", a, ca), ("B", b, cb)):
        out.append(_gate([fix], "nonfinite runs", stage, s,
                         lambda x: gates.nonfinite_gate(x, rule.arch_fix.max_nonfinite, s)))
        out.append(_gate([fix, ctrl], "failure rate", stage, s,
                         lambda x, c: gates.failure_rate_gate(x, c, s)))
        for other in others.get(stage, []) if fix is not None else []:
            out.append(replace(gates.failure_rate_gate(fix, other, s),
                               name=f"failure rate vs {other.label}"))
    for metric in ("loss", "ssim"):
        out.append(_gate([b, a], f"deep median {metric} vs Stage A", "B", s,
                         lambda x, y, mt=metric: gates.depth_gate(x, y, m, rule.stage_b_tolerance,
                                                               mt, s)))
    return out


def silver_gates(arms: Arms, rule: DecisionRule) -> list[gates.Gate]:
    """The opt fix's gates, in each stage: failure rate against the control, median loss at
    most ``max_median_loss_regression`` above the control's (and nonfinite runs if set)."""
    s, r = "opt_fix", rule.opt_fix
    out = []
    for stage in STAGES:
        fix, ctrl = arms.get((stage, s)), arms.get((stage, "control"))
        out.append(_gate([fix, ctrl], "failure rate", stage, s,
                         lambda x, c: gates.failure_rate_gate(x, c, s)))
        out.append(_gate([fix, ctrl], "median loss regression", stage, s,
                         lambda x, c: gates.loss_gate(x, c, rule.min_successful_seeds,
                                                  r.max_median_loss_regression, False,
                                                  "median loss regression", s)))
        if r.max_nonfinite is not None:
            out.append(_gate([fix], "nonfinite runs", stage, s,
                             lambda x: gates.nonfinite_gate(x, r.max_nonfinite, s)))
    return out


def control_failed(arms: Arms) -> str:
    """``yes`` if the control had an instability failure in a stage; ``no`` if it has finished
    runs in both stages and none failed; else ``unknown``."""
    ctrl = [arms.get((s, "control")) for s in STAGES]
    if any(c is not None and c.n_instability for c in ctrl):
        return "yes"
    if all(c is not None and c.n_done for c in ctrl):
        return "no"
    return "unknown"


@dataclass
class Evaluation:
    outcome: str
    inputs: tuple[str, str, str, str, str]
    gates: list[gates.Gate]
    gold: tuple[str, str]
    silver: tuple[str, str]
    possible: list[str]


def evaluate(arms: Arms, rule: DecisionRule, both_stages: bool, shared: bool,
             others: dict[str, list[gates.ArmEvidence]] | None = None) -> Evaluation:
    """Gates, fix verdicts and the outcome of one assignment of the runs (pure)."""
    gg, sg = gold_gates(arms, rule, others or {}), silver_gates(arms, rule)
    gold, silver = gates.combine(gg), gates.combine(sg)
    cf = control_failed(arms)
    inputs = ("yes" if both_stages else "no", "yes" if shared else "no", cf, gold[0], silver[0])
    return Evaluation(outcome_of(*inputs), inputs, gg + sg, gold, silver,
                      possible_outcomes(cf, gold[0], silver[0]))


# --- protocol --------------------------------------------------------------------------------
Protocols = dict[tuple[str, str, str], dict | None]  # (stage, sweep, arm_id) -> flat identity


def _key(row: dict) -> tuple[str, str, str]:
    return (str(row.get("stage")), str(row.get("sweep")), str(row.get("arm_id")))


def protocol_problems(roles: dict[str, dict[str, dict]], protocols: Protocols,
                      rule: DecisionRule, stage_rows: dict[str, list[dict]]
                      ) -> tuple[list[str], list[str]]:
    """(mismatches, notes): compared arms must agree on the arm identity except
    :data:`.protocol.ALLOWED_WITHIN_STAGE` (within a stage) and depth (across stages)."""
    mismatches, notes = [], []

    def check(a: dict, b: dict, allowed: tuple[str, ...], where: str) -> None:
        pa, pb = protocols.get(_key(a)), protocols.get(_key(b))
        if pa is None or pb is None:
            who = a if pa is None else b
            notes.append(f"{where}: protocol of '{who.get('arm_label')}' unknown (no readable "
                         "manifest); not checked")
            return
        diffs = protocol.differences(pa, pb, allowed)
        if diffs:
            mismatches.append(f"{where}: " + protocol.describe(diffs, str(a.get("arm_label")),
                                                        str(b.get("arm_label"))))

    for stage in STAGES:
        r = roles.get(stage, {})
        ctrl = r.get("control")
        if ctrl is None:
            continue
        compared = [r[x] for x in ("arch_fix", "opt_fix") if x in r]
        if rule.compare_with == "all":
            compared += [x for x in stage_rows.get(stage, []) if x is not ctrl
                         and x not in compared]
        for fix in compared:
            check(ctrl, fix, protocol.ALLOWED_WITHIN_STAGE,
                  f"Stage {stage} control vs '{fix.get('arm_label')}'")
    a, b = roles.get("A", {}).get("arch_fix"), roles.get("B", {}).get("arch_fix")
    if a is not None and b is not None:
        check(a, b, protocol.DEPTH_KEYS, "arch_fix Stage A vs Stage B")
    return mismatches, notes


# --- the decision ----------------------------------------------------------------------------
@dataclass
class Decision:
    outcome: str
    because: str
    gates: list[gates.Gate] = field(default_factory=list)
    fixes: dict[str, tuple[str, str]] = field(default_factory=dict)  # fix -> (verdict, why)
    provisional: str | None = None  # when INCOMPLETE: the outcome(s) still possible
    to_run: list[str] = field(default_factory=list)  # what settles an INCOMPLETE outcome
    notes: list[str] = field(default_factory=list)
    roles: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> role -> label
    mismatches: list[str] = field(default_factory=list)
    cases: list[tuple[str, str]] = field(default_factory=list)  # (assignment, outcome)
    inputs: tuple[str, ...] = ()


def retry_command(sweep: str) -> str:
    return f"python train.py -m +experiment={sweep} retry=[oom,exception]"


def _settle_lines(rows: dict[tuple[str, str], dict], keys: list[tuple[str, str]],
                  arms: Arms) -> list[str]:
    out = []
    for key in keys:
        row, arm = rows[key], arms[key]
        runs = ", ".join(arm.unsettled_runs) or f"{arm.n_unsettled} run(s)"
        line = (f"Stage {key[0]} {key[1]} '{arm.label}': settle {arm.n_unsettled} run(s) "
                f"({runs}) by rerunning sweep `{row.get('sweep')}` (resumes or retries "
                "unfinished runs)")
        if any(k in runs for k in ("(oom", "(exception")):
            line += f"; final oom/exception runs: `{retry_command(str(row.get('sweep')))}`"
        out.append(line)
    return out


def robustness(arms: Arms, rule: DecisionRule, both: bool, shared: bool,
               others: dict[str, list[gates.ArmEvidence]]) -> tuple[list[tuple[str, str]],
                                                        list[tuple[str, str]]]:
    """Every extreme assignment of the unsettled runs, per role arm-stage: ``(cases,
    sensitive keys)``; ``cases`` as ``(assignment text, outcome)``."""
    keys = sorted(k for k, a in arms.items() if a.n_unsettled)
    results = {}
    for bits in itertools.product((True, False), repeat=len(keys)):
        assigned = dict(arms)
        for k, bit in zip(keys, bits, strict=True):
            assigned[k] = arms[k].counted(bit)
        results[bits] = evaluate(assigned, rule, both, shared, others).outcome
    sensitive = []
    for i, k in enumerate(keys):
        if any(results[b] != results[b[:i] + (not b[i],) + b[i + 1:]] for b in results):
            sensitive.append(k)
    cases = [(", ".join(f"{k[0]}/{k[1]} {'failed' if bit else 'ok'}"
                        for k, bit in zip(keys, b, strict=True)) or "(none unsettled)", o)
             for b, o in results.items()]
    return cases, sensitive


def _because(ev: Evaluation, arms: Arms) -> str:
    out = ev.outcome
    if out == NOT_REPRODUCED:
        rates = ", ".join(f"Stage {s} {gates.rate_text(arms[(s, 'control')])}" for s in STAGES)
        return ("the control had no instability failure in either stage "
                f"({rates}): the premise did not appear at these depths and epochs; "
                "no fix is chosen")
    arch, opt = f"the arch fix {ev.gold[1]}", f"the opt fix {ev.silver[1]}"
    return {GOLD: arch, SILVER: f"{arch}; {opt}", PIVOT: f"{arch}; {opt}; the control "
            "failed somewhere"}.get(out, f"{arch}; {opt}")


def decide(rows: list[dict], rule: DecisionRule, control: str | None = None,
           protocols: Protocols | None = None) -> Decision:
    """Evaluate the decision rule on summary rows (one per arm, with a ``stage`` key).

    Parameters
    ----------
    rows : list of dict
        Summary rows (``summary.csv``): counts ``n_ok, n_instability, n_nonfinite,
        n_unsettled``, ``unsettled_runs``, ``<metric>_n``, ``<metric>_median`` and the same
        for ``rule.ssim_metric``.
    rule : DecisionRule
    control : str, optional
        Arm label(s) or id(s) playing the control (overrides the rule's control role).
    protocols : dict, optional
        ``(stage, sweep, arm_id) -> flattened identity config`` (:mod:`.protocol`).
    """
    by_stage = {s: [r for r in rows if r.get("stage") == s] for s in STAGES}
    roles, arms, keyed, missing = {}, {}, {}, []
    for stage in STAGES:
        found, problems = resolve_roles(by_stage[stage], rule, control)
        roles[stage] = found
        if not by_stage[stage]:
            spec = rule.stages[stage]
            missing.append(f"Stage {stage}: no records (no sweep named *{spec.sweep_contains}*"
                           f" and no arm at depth {spec.depth}): run control, arch_fix and "
                           f"opt_fix there, at least {rule.min_successful_seeds} seeds each")
            continue
        missing += [f"Stage {stage}: {p}" for p in problems.values()]
        for role, row in found.items():
            arms[(stage, role)] = arm_of(row, rule)
            keyed[(stage, role)] = row
    others = {}
    if rule.compare_with == "all":
        for stage in STAGES:
            taken = {id(roles[stage][r]) for r in ("control", "arch_fix")
                     if r in roles[stage]}
            others[stage] = [arm_of(r, rule) for r in by_stage[stage]
                             if id(r) not in taken and roles[stage].get("arch_fix")]
    both = all(by_stage[s] for s in STAGES)
    mismatches, notes = protocol_problems(roles, protocols or {}, rule, by_stage)
    shared = not mismatches or rule.allow_protocol_mismatch
    if mismatches and rule.allow_protocol_mismatch:
        notes.append("protocol mismatches allowed by the rule's allow_protocol_mismatch "
                     "switch: " + " | ".join(mismatches))
    base = evaluate(arms, rule, both, shared, others)
    d = Decision(base.outcome, _because(base, arms), base.gates,
                 {"arch_fix": base.gold, "opt_fix": base.silver}, notes=notes,
                 roles={s: {k: str(v.get("arm_label")) for k, v in r.items()}
                        for s, r in roles.items() if r},
                 mismatches=mismatches, inputs=base.inputs)
    to_run = list(missing)
    if not shared:
        to_run += ["protocol differs between compared arms (rerun them with one protocol, or "
                   "set allow_protocol_mismatch): " + m for m in mismatches]
    to_run += [f"Stage {g.stage} {g.subject}: {g.name} untestable: {g.reason}"
               for g in base.gates if g.verdict == gates.UNTESTABLE and g.numbers != "-"]
    if rule.robust_to_unsettled:
        d.cases, sensitive = robustness(arms, rule, both, shared, others)
        outcomes = {o for _, o in d.cases} | {base.outcome}
        if len(outcomes) > 1:
            to_run += _settle_lines(keyed, sensitive or sorted(
                k for k, a in arms.items() if a.n_unsettled), arms)
            d.notes.append("robustness: the outcome changes with how the unsettled runs end ("
                           + ", ".join(sorted(outcomes)) + ")")
            d.outcome, d.because = INCOMPLETE, (
                "the outcome depends on runs that ended otherwise (unsettled); provisional "
                f"outcome with them left out: {base.outcome} ({_because(base, arms)})")
        elif any(a.n_unsettled for a in arms.values()):
            d.notes.append(f"robustness: {len(d.cases)} extreme assignment(s) of the unsettled "
                           f"runs all give {base.outcome}: it stands")
    if d.outcome != INCOMPLETE:
        d.notes += [f"not needed for this outcome: {m}" for m in missing]
    if d.outcome == INCOMPLETE:
        d.provisional = " or ".join(base.possible if base.outcome == INCOMPLETE
                                    else [base.outcome])
        if base.outcome == INCOMPLETE:
            d.because = "needed inputs are missing, untestable or not comparable"
        d.to_run = to_run
    return d
