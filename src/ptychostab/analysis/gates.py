"""The gates of the decision rule: small pure functions of per-arm counts and medians.

Each gate returns a :class:`Gate` whose ``verdict`` is one of :data:`VERDICTS`:

- ``pass`` / ``fail``: the comparison was made and went this way;
- ``neutral``: nothing to compare (the failure-rate gate when neither arm had an instability
  failure in the stage): the gate is skipped;
- ``untestable``: the comparison cannot be made yet (too few finite values, no finished run);
  untestable is never a pass.

Only instability (``nonfinite``, ``diverged``, ``collapsed``) is a failure: the failure rate is
instability / (ok + instability). Every other ending (oom, exception, infra, unfinished) is
``unsettled``: beside the rate, never inside it (:mod:`ptychostab.analysis.decide` counts it both
ways to see whether the outcome depends on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ptychostab.analysis.rule import fmt

PASS, FAIL, NEUTRAL, UNTESTABLE = "pass", "fail", "neutral", "untestable"
VERDICTS = (PASS, FAIL, NEUTRAL, UNTESTABLE)


@dataclass(frozen=True)
class ArmEvidence:
    """What the gates read of one arm in one stage (built from a summary row).

    ``loss_n`` / ``ssim_n`` count the arm's ok runs with a *finite* value of the metric (an ok
    run can carry a NaN metric); ``n_unsettled`` counts runs that ended otherwise (oom,
    exception, infra, timeout, preempted, interrupted, missing, corrupt).
    """

    label: str
    stage: str
    n_ok: int
    n_instability: int
    n_nonfinite: int
    n_unsettled: int = 0
    loss_n: int = 0
    loss_median: float = math.nan
    ssim_n: int = 0
    ssim_median: float = math.nan
    unsettled_runs: tuple[str, ...] = ()

    @property
    def n_done(self) -> int:
        return self.n_ok + self.n_instability

    @property
    def rate(self) -> float:
        return self.n_instability / self.n_done if self.n_done else math.nan

    def counted(self, as_failure: bool) -> ArmEvidence:
        """This arm with its unsettled runs counted as instability failures (``True``) or as
        successes of unknown loss (``False``): an unnamed kind (no nonfinite gate sees
        them) that adds no finite value to a median."""
        if as_failure:
            return replace(self, n_instability=self.n_instability + self.n_unsettled,
                           n_unsettled=0)
        return replace(self, n_ok=self.n_ok + self.n_unsettled, n_unsettled=0)


@dataclass(frozen=True)
class Gate:
    """One gate's verdict, the numbers it used and why."""

    name: str
    stage: str
    subject: str
    verdict: str
    numbers: str
    reason: str


def rate_text(arm: ArmEvidence) -> str:
    return f"{arm.n_instability}/{arm.n_done}" + (
        f" = {arm.rate:.3g}" if arm.n_done else " = n/a")


def failure_rate_gate(fix: ArmEvidence, control: ArmEvidence, subject: str = "") -> Gate:
    """Pass if the fix's instability rate is below the control's; fail if above, or equal
    while the control fails; neutral if neither has an instability failure; untestable
    without a finished run in either arm."""
    numbers = f"{fix.label} {rate_text(fix)} vs {control.label} {rate_text(control)}"

    def gate(verdict: str, reason: str) -> Gate:
        return Gate("failure rate", fix.stage, subject, verdict, numbers, reason)

    if not fix.n_done or not control.n_done:
        who = fix.label if not fix.n_done else control.label
        return gate(UNTESTABLE, f"{who} has no finished (ok or instability) run")
    if fix.n_instability == 0 and control.n_instability == 0:
        return gate(NEUTRAL, "neither arm has an instability failure here: nothing to reduce")
    if fix.rate < control.rate:
        return gate(PASS, "below the control's rate")
    if fix.rate > control.rate:
        return gate(FAIL, "above the control's rate")
    return gate(FAIL, "equal to the control's rate while the control fails")


def seeds_needed(n_values: int, n_done: int, min_seeds: int) -> str:
    """About how many more seeds give ``min_seeds`` finite values at the observed rate."""
    if n_done <= 0 or n_values <= 0:
        return "not estimable (no finite value yet)"
    per_seed = n_values / n_done
    more = math.ceil((min_seeds - n_values) / per_seed)
    return f"about {more} more seed(s) at the observed {n_values}/{n_done} finite values per run"


def _trust(arm: ArmEvidence, n_values: int, min_seeds: int) -> str:
    """``trusted`` (>= min_seeds finite values), ``never`` (no ok run among at least
    min_seeds finished runs), else ``few``."""
    if n_values >= min_seeds:
        return "trusted"
    if arm.n_ok == 0 and arm.n_done >= min_seeds:
        return "never"
    return "few"


def _few(arm: ArmEvidence, n_values: int, min_seeds: int) -> str:
    return (f"{arm.label}: {n_values} finite value(s) < {min_seeds} needed for a trusted "
            f"median; {seeds_needed(n_values, arm.n_done, min_seeds)}")


def loss_gate(fix: ArmEvidence, ref: ArmEvidence, min_seeds: int, max_regression: float,
              strict: bool, name: str, subject: str = "") -> Gate:
    """Median loss of ``fix`` against ``ref``: pass if ``fix < ref`` (``strict``) or
    ``fix <= ref * (1 + max_regression)``. Medians need ``min_seeds`` finite values; a
    reference with no ok run among at least ``min_seeds`` finished runs is beaten by any
    trusted fix; a fix in that case fails; too few values otherwise: untestable."""
    numbers = (f"{fix.label} {fmt(fix.loss_median)} ({fix.loss_n} values) vs {ref.label} "
               f"{fmt(ref.loss_median)} ({ref.loss_n} values)")

    def gate(verdict: str, reason: str) -> Gate:
        return Gate(name, fix.stage, subject, verdict, numbers, reason)

    mine, theirs = _trust(fix, fix.loss_n, min_seeds), _trust(ref, ref.loss_n, min_seeds)
    if mine == "never":
        return gate(FAIL, f"{fix.label} has no ok run in {fix.n_done} finished runs")
    if mine == "few":
        return gate(UNTESTABLE, _few(fix, fix.loss_n, min_seeds))
    if theirs == "never":
        return gate(PASS, f"{ref.label} has no ok run in {ref.n_done} finished runs")
    if theirs == "few":
        return gate(UNTESTABLE, _few(ref, ref.loss_n, min_seeds))
    if strict:
        ok = fix.loss_median < ref.loss_median
        return gate(PASS if ok else FAIL, "below" if ok else "not below")
    bound = ref.loss_median * (1.0 + max_regression)  # exact at the bound
    rel = fix.loss_median / ref.loss_median - 1.0 if ref.loss_median else math.inf
    ok = fix.loss_median <= bound
    return gate(PASS if ok else FAIL,
                f"{rel:+.1%} {'within' if ok else 'beyond'} the allowed +{max_regression:.0%}")


def nonfinite_gate(fix: ArmEvidence, limit: int, subject: str = "") -> Gate:
    """Pass with at most ``limit`` nonfinite runs; untestable without a finished run."""
    numbers = f"{fix.n_nonfinite} nonfinite of {fix.n_done} finished (limit {limit})"
    if not fix.n_done:
        return Gate("nonfinite runs", fix.stage, subject, UNTESTABLE, numbers,
                    "no finished run")
    ok = fix.n_nonfinite <= limit
    return Gate("nonfinite runs", fix.stage, subject, PASS if ok else FAIL, numbers,
                "within the limit" if ok else "above the limit")


def depth_gate(deep: ArmEvidence, shallow: ArmEvidence, min_seeds: int, tolerance: float,
               metric: str, subject: str = "") -> Gate:
    """Stage B "matches or beats the Stage A" value of the same arm: for ``loss`` the deep
    median at most ``tolerance`` above the Stage A one, for ``ssim`` at most that much below."""
    is_loss = metric == "loss"
    d_n, d_m = (deep.loss_n, deep.loss_median) if is_loss else (deep.ssim_n, deep.ssim_median)
    s_n, s_m = (shallow.loss_n, shallow.loss_median) if is_loss else (
        shallow.ssim_n, shallow.ssim_median)
    name = f"deep median {metric} vs Stage A"
    numbers = (f"depth-B {fmt(d_m)} ({d_n} values) vs Stage A {fmt(s_m)} ({s_n} values), "
               f"tolerance {tolerance:.0%}")

    def gate(verdict: str, reason: str) -> Gate:
        return Gate(name, deep.stage, subject, verdict, numbers, reason)

    for arm, n in ((deep, d_n), (shallow, s_n)):
        trust = _trust(arm, n, min_seeds)
        if trust == "never":
            return gate(FAIL, f"{arm.label} (stage {arm.stage}) has no ok run in {arm.n_done}")
        if trust == "few":
            return gate(UNTESTABLE, _few(arm, n, min_seeds))
    ok = d_m <= s_m * (1 + tolerance) if is_loss else d_m >= s_m * (1 - tolerance)
    return gate(PASS if ok else FAIL, "matches or beats Stage A" if ok else
                ("worse than Stage A beyond the tolerance"))


def missing_gate(name: str, stage: str, subject: str, why: str) -> Gate:
    """The gate of an input that is not there (no arm, no stage): untestable."""
    return Gate(name, stage, subject, UNTESTABLE, "-", why)


def combine(gates: list[Gate], need_rate_pass: bool = True) -> tuple[str, str]:
    """A fix's verdict: any fail -> fail; else any untestable -> untestable; else pass
    (neutral gates skipped), which needs at least one failure-rate pass."""
    verdicts = [g.verdict for g in gates]
    if FAIL in verdicts:
        failed = [f"{g.name} (stage {g.stage})" for g in gates if g.verdict == FAIL]
        return FAIL, "fails " + ", ".join(failed)
    if UNTESTABLE in verdicts:
        open_ = [f"{g.name} (stage {g.stage})" for g in gates if g.verdict == UNTESTABLE]
        return UNTESTABLE, "untestable: " + ", ".join(open_)
    rate_pass = any(g.name == "failure rate" and g.verdict == PASS for g in gates)
    if need_rate_pass and not rate_pass:
        return FAIL, "no failure-rate pass in any stage"
    return PASS, "passes every gate"
