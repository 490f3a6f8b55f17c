"""Who plays control, arch_fix and opt_fix in each stage: resolved once per aggregation.

:func:`resolve` applies :func:`ptychostab.analysis.rule.resolve_roles` to the summary rows of
each stage (and, for a stage without one control, to each of its sweeps: the control a sweep's
arms are compared with). The result, :class:`Roles`, names arms by ``(sweep, arm_id)``, so the
summary's role column, its change-vs-control columns and the decision
(:func:`ptychostab.analysis.decide.decide`) all read the same resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptychostab.analysis.rule import STAGES, DecisionRule, resolve_roles

ArmKey = tuple[str, str]  # (sweep, arm_id): unique within a stage


def arm_key(row: dict) -> ArmKey:
    return (str(row.get("sweep")), str(row.get("arm_id")))


@dataclass(frozen=True)
class Roles:
    """The resolution of the roles among one aggregation's arms."""

    #: stage -> role -> the arm playing it (exactly one arm matched)
    stages: dict[str, dict[str, ArmKey]] = field(default_factory=dict)
    #: stage -> role -> why no arm plays it (none or several matched, or already taken)
    problems: dict[str, dict[str, str]] = field(default_factory=dict)
    #: (stage, sweep) -> the control its arms are compared with: the stage's control, else
    #: the sweep's own
    controls: dict[tuple[str, str], ArmKey] = field(default_factory=dict)

    def role_of(self, stage: str, key: ArmKey) -> str:
        """The arm's role in its stage, ``""`` for none."""
        return next((r for r, k in self.stages.get(stage, {}).items() if k == key), "")

    def control_of(self, stage: str, sweep: str) -> ArmKey | None:
        return self.controls.get((stage, sweep))

    def in_stage(self, stage: str, rows: list[dict]) -> tuple[dict[str, dict], dict[str, str]]:
        """``(role -> row, role -> problem)`` among one stage's rows, as
        :func:`~ptychostab.analysis.rule.resolve_roles` returns them."""
        by_key = {arm_key(r): r for r in rows}
        found = {role: by_key[k] for role, k in self.stages.get(stage, {}).items()
                 if k in by_key}
        return found, dict(self.problems.get(stage, {}))


def resolve(rows: list[dict], rule: DecisionRule, control: str | None = None) -> Roles:
    """Resolve the roles of every stage among summary rows (``stage``, ``sweep``, ``arm_id``
    and the fields the rule's role specs name). ``control``: arm labels or ids, comma-separated,
    that replace the rule's control spec."""
    stages, problems, controls = {}, {}, {}
    for stage in STAGES:
        sel = [r for r in rows if r.get("stage") == stage]
        found, why = resolve_roles(sel, rule, control)
        stages[stage] = {role: arm_key(r) for role, r in found.items()}
        problems[stage] = why
        for sweep in dict.fromkeys(str(r.get("sweep")) for r in sel):
            ctrl = found.get("control")
            if ctrl is None:
                ctrl = resolve_roles([r for r in sel if str(r.get("sweep")) == sweep], rule,
                                     control)[0].get("control")
            if ctrl is not None:
                controls[(stage, sweep)] = arm_key(ctrl)
    return Roles(stages, problems, controls)
