"""Hand-made studies for the decision tests: summary rows, run records and protocols, no files.

``study({("A", "control"): [0.02, "nonfinite", ...], ...})`` builds what
:func:`ptychostab.analysis.decide.decide` reads. An outcome per seed (seeds 0, 1, ...):

- a float: an ok run with that loss (amp SSIM ``1 - loss``, phase SSIM ``1 - 2 loss``, max grad
  norm 5);
- a status string (``"nonfinite"``, ``"oom"``, ``"timeout"``, ...): a run that ended so;
- a dict: an ok run with these fields (``loss``, ``amp_ssim``, ``phase_ssim``, ``grad``).

Every arm's protocol is the stage's declared protocol of the rule (so a study is in order unless
a test changes it).
"""

from __future__ import annotations

import math

from ptychostab.analysis import decide as dec
from ptychostab.analysis.gates import GRAD

RULE = dec.load_rule()
FIELDS = {"control": {"arch": "hybrid", "clip": "none"},
          "arch_fix": {"arch": "stable_hybrid", "clip": "none"},
          "opt_fix": {"arch": "hybrid", "clip": "agc", "clip_value": 0.01}}
ARCH = {"control": "hybrid", "arch_fix": "stable_hybrid", "opt_fix": "hybrid"}
CLIP = {"control": ("none", None), "arch_fix": ("none", None), "opt_fix": ("agc", 0.01)}


def label(role: str, stage: str) -> str:
    return f"{role}{'' if stage == 'A' else '-deep'}"


def run_record(stage: str, role: str, seed: int, outcome) -> dict:
    rec = {"stage": stage, "sweep": f"stage_{stage.lower()}", "arm_id": label(role, stage),
           "seed": seed, "amp_ssim": math.nan, "phase_ssim": math.nan,
           "best_val_loss": math.nan, GRAD: math.nan}
    if isinstance(outcome, str):
        rec["status"] = outcome
        return rec
    if not isinstance(outcome, dict):
        outcome = {"loss": outcome}
    loss = outcome.get("loss", 0.02)
    rec.update(status="ok", best_val_loss=loss,
               amp_ssim=outcome.get("amp_ssim", 1 - loss),
               phase_ssim=outcome.get("phase_ssim", 1 - 2 * loss),
               **{GRAD: outcome.get("grad", 5.0)})
    return rec


def declared(stage: str, role: str, rule=RULE) -> dict:
    """The flattened protocol of an arm that follows the stage's declared protocol."""
    spec = rule.stages[stage]
    clip, value = CLIP[role]
    return {**spec.protocol, "depth": spec.depth, "arch.fno_blocks": spec.depth,
            "arch.name": ARCH[role], "clip.algorithm": clip, "clip.value": value,
            "arch.hidden_channels": 32}


def study(arms: dict, rule=RULE) -> tuple[list[dict], list[dict], dict]:
    """``(rows, runs, protocols)`` of a hand-made study: ``arms[(stage, role)]`` lists one
    outcome per seed (see the module docstring)."""
    rows, runs, protocols = [], [], {}
    for (stage, role), outcomes in arms.items():
        lab = label(role, stage)
        rows.append({"stage": stage, "sweep": f"stage_{stage.lower()}", "arm_id": lab,
                     "arm_label": lab, **FIELDS[role],
                     "depth": rule.stages[stage].depth})
        runs += [run_record(stage, role, seed, out) for seed, out in enumerate(outcomes)]
        protocols[(stage, f"stage_{stage.lower()}", lab)] = declared(stage, role, rule)
    return rows, runs, protocols


def decide(arms: dict, rule=RULE, **kw) -> dec.Decision:
    rows, runs, protocols = study(arms, rule)
    protocols = kw.pop("protocols", protocols)
    return dec.decide(rows, rule, protocols=protocols, runs=runs, **kw)


def ok(n: int, loss: float, step: float = 0.0) -> list[float]:
    """``n`` ok runs around ``loss`` (``loss + step * (i - (n - 1) / 2)``)."""
    return [round(loss + step * (i - (n - 1) / 2), 10) for i in range(n)]


def arms(control_a, arch_a, opt_a, control_b, arch_b, opt_b) -> dict:
    return {("A", "control"): control_a, ("A", "arch_fix"): arch_a, ("A", "opt_fix"): opt_a,
            ("B", "control"): control_b, ("B", "arch_fix"): arch_b, ("B", "opt_fix"): opt_b}
