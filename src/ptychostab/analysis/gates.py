"""The gates of the decision rule: small pure functions of per-arm counts and values.

Each gate returns a :class:`Gate` with its estimate, its one-sided bounds at the rule's
``evidence_level`` and a ``verdict``, one of :data:`VERDICTS`:

- ``pass`` / ``fail``: the evidence settles it this way;
- ``inconclusive``: data, not enough: the interval spans the decision (the report says how many
  seeds per arm would settle it at the observed effect);
- ``untestable``: no data (too few finite values, no finished run, no arm): never a pass.

Comparison gates come in two kinds (``improvement`` of a fix: ``rate_control - rate_fix`` for
failure rates, ``1 - median_fix / median_control`` for the loss; ``regression`` of a fix
against a reference: ``median_fix / median_ref - 1``, for an SSIM ``1 - median_fix /
median_ref``):

- *superiority*: pass when the low bound of the improvement is > 0; else fail when its high
  bound is < ``min_effect`` (the smallest improvement the study cares about); else
  inconclusive. Pass is checked first.
- *non-inferiority*: pass when the high bound of the regression is within the allowed bound
  (<=); fail when its low bound is beyond it (>); else inconclusive.

Bounds: Newcombe's hybrid score interval with continuity correction for a difference of
failure rates, the percentile bootstrap for a ratio of medians
(:mod:`ptychostab.analysis.stats`). Each gate also carries its *point* verdict (the estimate
alone: the strategy's literal reading), which decides under ``evidence: point`` and gives the
provisional outcome otherwise. Limit gates (nonfinite runs, grad norm) are counts and medians:
point gates, the same in both readings.

Only instability (``nonfinite``, ``diverged``, ``collapsed``) is a failure: the failure rate is
instability / (ok + instability). Every other ending (oom, exception, infra, unfinished) and an
ok run with a non-finite loss or SSIM is ``unsettled``: beside the rate, never inside it
(:mod:`ptychostab.analysis.decide` counts it three ways to see whether the outcome depends on
it).
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field, replace

from ptychostab.analysis import power, stats
from ptychostab.analysis.rule import fmt

PASS, FAIL, INCONCLUSIVE, UNTESTABLE = "pass", "fail", "inconclusive", "untestable"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, UNTESTABLE)
#: the values key of each run's max pre-clip grad norm (collect's column)
GRAD = "grad_norm_pre_max"
#: the ways robustness counts an arm's unsettled runs
COUNTED = ("failed", "worst", "best")
_EPS = 1e-12  # relative slack of "within the bound" (a bound met exactly is met)


@dataclass(frozen=True)
class ArmEvidence:
    """What the gates read of one arm in one stage.

    ``n_ok`` counts the *clean* ok runs: every decision metric (the loss and each SSIM)
    finite; ``values[m]`` holds their finite values of ``m`` (and of :data:`GRAD`).
    ``unsettled`` names the runs that ended otherwise (oom, exception, infra, timeout,
    preempted, interrupted, missing, corrupt) and the ok runs with a non-finite loss or SSIM
    (``n_ok_nonfinite`` of them): ``"seed=3 (oom)"``.
    """

    label: str
    stage: str
    n_ok: int
    n_instability: int
    n_nonfinite: int
    unsettled: tuple[str, ...] = ()
    n_ok_nonfinite: int = 0
    values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    higher_is_better: frozenset[str] = frozenset()

    @property
    def n_unsettled(self) -> int:
        return len(self.unsettled)

    @property
    def n_done(self) -> int:
        return self.n_ok + self.n_instability

    @property
    def rate(self) -> float:
        return self.n_instability / self.n_done if self.n_done else math.nan

    @property
    def unsettled_runs(self) -> tuple[str, ...]:
        return self.unsettled

    def vals(self, metric: str) -> tuple[float, ...]:
        return self.values.get(metric, ())

    def counted(self, how: str) -> ArmEvidence:
        """This arm with its unsettled runs counted ``"failed"`` (instability failures of an
        unnamed kind: no nonfinite gate sees them) or as successes at its ``"worst"`` or
        ``"best"`` observed finite value of every metric (a metric with no value gets none)."""
        if how not in COUNTED:
            raise ValueError(f"how must be one of {COUNTED}, got {how!r}")
        k = self.n_unsettled
        if not k:
            return self
        if how == "failed":
            return replace(self, n_instability=self.n_instability + k, unsettled=())
        values = {}
        for m, v in self.values.items():
            if not v:
                values[m] = v
                continue
            high = (how == "best") == (m in self.higher_is_better)
            values[m] = v + (max(v) if high else min(v),) * k
        return replace(self, n_ok=self.n_ok + k, unsettled=(), values=values)


@dataclass(frozen=True)
class Gate:
    """One gate's verdict, the numbers it used and why.

    ``estimate``/``low``/``high``: the improvement (superiority) or the regression
    (non-inferiority) with its one-sided bounds (NaN for limit gates); ``point``: the
    verdict of the estimate alone; ``against``: the arm compared with; ``settle``: for an
    inconclusive gate, how many seeds per arm would settle it (an estimate).
    """

    name: str
    stage: str
    subject: str
    verdict: str
    numbers: str
    reason: str
    against: str = ""
    kind: str = "limit"
    estimate: float = math.nan
    low: float = math.nan
    high: float = math.nan
    point: str = ""
    settle: str = ""
    seeds: int | None = None

    def interval_text(self) -> str:
        """``+0.3 [-0.05, 0.6]`` (as fractions); ``-`` for a limit gate."""
        if not math.isfinite(self.estimate):
            return "-"
        return f"{self.estimate:+.3g} [{self.low:+.3g}, {self.high:+.3g}]"


@functools.lru_cache(maxsize=8192)
def _ratio(fix_values: tuple[float, ...], ref_values: tuple[float, ...],
           level: float) -> tuple[float, float, float]:
    """:func:`.stats.median_ratio_bounds`, cached: robustness asks the same pairs again."""
    return stats.median_ratio_bounds(fix_values, ref_values, level)


@functools.lru_cache(maxsize=8192)
def _newcombe(k1: int, n1: int, k2: int, n2: int, level: float) -> tuple[float, float, float]:
    return stats.newcombe_difference(k1, n1, k2, n2, level)


def rate_text(arm: ArmEvidence) -> str:
    return f"{arm.n_instability}/{arm.n_done}" + (
        f" = {arm.rate:.3g}" if arm.n_done else " = n/a")


def _pct(x: float) -> str:
    return f"{x:+.1%}" if math.isfinite(x) else "n/a"


def _le(a: float, b: float) -> bool:
    """``a <= b`` with a relative slack of 1e-12 (a bound met exactly is met)."""
    return a <= b + _EPS * max(1.0, abs(b))


def superiority(est: float, low: float, high: float, min_effect: float) -> str:
    """Interval verdict of an improvement: pass if ``low > 0``; else fail if
    ``high < min_effect``; else inconclusive."""
    if low > 0:
        return PASS
    if high < min_effect:
        return FAIL
    return INCONCLUSIVE


def non_inferiority(est: float, low: float, high: float, bound: float) -> str:
    """Interval verdict of a regression: pass if ``high <= bound``; fail if ``low > bound``;
    else inconclusive."""
    if _le(high, bound):
        return PASS
    if not _le(low, bound):
        return FAIL
    return INCONCLUSIVE


def _verdict(interval: str, point_verdict: str, point: bool) -> str:
    return point_verdict if point else interval


def _settle_text(seeds: int | None, what: str) -> str:
    if seeds is None:
        return f"not settled by more seeds at the observed {what}"
    if seeds > power.MAX_SEEDS:
        return f"more than {power.MAX_SEEDS} seeds per arm at the observed {what}"
    return f"about {seeds} seeds per arm would settle it at the observed {what} (an estimate)"


# --- failure rate ----------------------------------------------------------------------------
def failure_rate_gate(fix: ArmEvidence, control: ArmEvidence, level: float, min_effect: float,
                      point: bool = False, subject: str = "", settle: bool = False) -> Gate:
    """Superiority of the fix's failure rate: improvement ``rate_control - rate_fix`` with
    Newcombe's bounds; untestable without a finished run in either arm. Point: pass if the
    fix's rate is below the control's."""
    numbers = f"{fix.label} {rate_text(fix)} vs {control.label} {rate_text(control)}"

    def gate(verdict: str, reason: str, **kw) -> Gate:
        return Gate("failure rate", fix.stage, subject, verdict, numbers, reason,
                    against=control.label, kind="superiority", **kw)

    if not fix.n_done or not control.n_done:
        who = fix.label if not fix.n_done else control.label
        return gate(UNTESTABLE, f"{who} has no finished (ok or instability) run",
                    point=UNTESTABLE)
    est, lo, hi = _newcombe(control.n_instability, control.n_done, fix.n_instability,
                            fix.n_done, level)
    interval = superiority(est, lo, hi, min_effect)
    pv = PASS if est > 0 else FAIL
    verdict = _verdict(interval, pv, point)
    reason = {PASS: "lower than the control's", FAIL: (
        f"improvement below the {min_effect:.0%} that matters" if not point else
        "not lower than the control's"), INCONCLUSIVE: (
        f"the interval spans 0 and the {min_effect:.0%} that matters")}[verdict]
    if point:
        reason += " (point reading)"
    seeds, text = None, ""
    if settle and verdict == INCONCLUSIVE:
        seeds = power.seeds_for_rates(round(control.rate, 6), round(fix.rate, 6), level,
                                      min_effect, start=min(fix.n_done, control.n_done) + 1)
        text = _settle_text(seeds, f"rates ({fix.n_instability}/{fix.n_done} vs "
                                   f"{control.n_instability}/{control.n_done})")
    return gate(verdict, reason, estimate=est, low=lo, high=hi, point=pv, settle=text,
                seeds=seeds)


# --- medians ---------------------------------------------------------------------------------
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
    runs = arm.n_done + arm.n_unsettled
    return (f"{arm.label}: {n_values} finite value(s) < {min_seeds} needed for a trusted "
            f"median; {seeds_needed(n_values, runs, min_seeds)}")


def _median(v) -> float:
    return float(statistics.median(v)) if len(v) else math.nan


def _numbers(fix: ArmEvidence, ref: ArmEvidence, metric: str, fv, rv) -> str:
    a, b = fix.label, ref.label
    if a == b or fix.stage != ref.stage:  # one arm in two stages
        a, b = f"{a} (Stage {fix.stage})", f"{b} (Stage {ref.stage})"
    return (f"{a} {fmt(_median(fv))} ({len(fv)} values) vs {b} {fmt(_median(rv))} "
            f"({len(rv)} values)")


def _values_settle(est: float, lo: float, hi: float, fix: ArmEvidence, ref: ArmEvidence,
                   fv, rv, above: float | None, below: float | None, level: float) -> tuple:
    need = power.seeds_for_bounds(est, lo, hi, len(fv), len(rv), above, below, level)
    seeds = None if need is None else max(
        power.seeds_from_values(need, len(fv), fix.n_done + fix.n_unsettled) or need,
        power.seeds_from_values(need, len(rv), ref.n_done + ref.n_unsettled) or need)
    return seeds, _settle_text(seeds, f"effect ({est:+.1%})")


def loss_gate(fix: ArmEvidence, ref: ArmEvidence, metric: str, min_seeds: int, level: float,
              min_effect: float, point: bool = False, subject: str = "",
              settle: bool = False, name: str = "median loss below") -> Gate:
    """Superiority of the median loss: improvement ``1 - median_fix / median_ref`` with
    bootstrap bounds. Medians need ``min_seeds`` finite values (fewer: untestable); a
    reference with no ok run among at least ``min_seeds`` finished runs is beaten by any
    trusted fix, a fix in that case fails. Point: pass if the fix's median is below."""
    fv, rv = fix.vals(metric), ref.vals(metric)
    numbers = _numbers(fix, ref, metric, fv, rv)

    def gate(verdict: str, reason: str, **kw) -> Gate:
        return Gate(name, fix.stage, subject, verdict, numbers, reason, against=ref.label,
                    kind="superiority", **kw)

    ended, (ratio, r_lo, r_hi) = _median_ratio(gate, fix, ref, fv, rv, min_seeds, level,
                                                beaten=True)
    if ended is not None:
        return ended
    est, lo, hi = 1.0 - ratio, 1.0 - r_hi, 1.0 - r_lo
    interval = superiority(est, lo, hi, min_effect)
    pv = PASS if _median(fv) < _median(rv) else FAIL
    verdict = _verdict(interval, pv, point)
    reason = {PASS: "below the reference's", FAIL: (
        f"improvement below the {min_effect:.0%} that matters" if not point else "not below"),
        INCONCLUSIVE: f"the interval spans 0 and the {min_effect:.0%} that matters"}[verdict]
    if point:
        reason += " (point reading)"
    seeds, text = (None, "")
    if settle and verdict == INCONCLUSIVE:
        seeds, text = _values_settle(est, lo, hi, fix, ref, fv, rv, 0.0, min_effect, level)
    return gate(verdict, reason, estimate=est, low=lo, high=hi, point=pv, settle=text,
                seeds=seeds)


def _median_ratio(gate, fix: ArmEvidence, ref: ArmEvidence, fv, rv, min_seeds: int,
                  level: float, beaten: bool) -> tuple[Gate | None, tuple[float, float, float]]:
    """The start of both median gates: the gate already decided when a median is not trusted
    or the ratio cannot be estimated (then ``(gate, (nan, nan, nan))``), else ``(None,
    (ratio, low, high))`` of ``median(fv) / median(rv)`` at ``level``."""
    nan3 = (math.nan, math.nan, math.nan)
    early = _trust_gate(fix, ref, len(fv), len(rv), min_seeds, beaten=beaten)
    if early is not None:
        return gate(early[0], early[1], point=early[0]), nan3
    ratio, r_lo, r_hi = _ratio(fv, rv, level)
    if not math.isfinite(r_lo):
        return gate(UNTESTABLE, f"ratio not estimable ({ref.label}'s median can be 0)",
                    point=UNTESTABLE), nan3
    return None, (ratio, r_lo, r_hi)


def _trust_gate(fix: ArmEvidence, ref: ArmEvidence, n_fix: int, n_ref: int, min_seeds: int,
                beaten: bool) -> tuple[str, str] | None:
    """The verdict when a median is not trusted (``never`` / ``few``), else None."""
    mine, theirs = _trust(fix, n_fix, min_seeds), _trust(ref, n_ref, min_seeds)
    if mine == "never":
        return FAIL, f"{fix.label} has no ok run in {fix.n_done} finished runs"
    if mine == "few":
        return UNTESTABLE, _few(fix, n_fix, min_seeds)
    if theirs == "never":
        if beaten:
            return PASS, f"{ref.label} has no ok run in {ref.n_done} finished runs"
        return FAIL, f"{ref.label} (stage {ref.stage}) has no ok run in {ref.n_done}"
    if theirs == "few":
        return UNTESTABLE, _few(ref, n_ref, min_seeds)
    return None


def regression_gate(fix: ArmEvidence, ref: ArmEvidence, metric: str, min_seeds: int,
                    level: float, bound: float, point: bool = False, subject: str = "",
                    settle: bool = False, name: str = "median loss regression",
                    higher_is_better: bool = False, reference_beaten: bool = True,
                    against: str | None = None) -> Gate:
    """Non-inferiority of ``fix``'s median of ``metric`` against ``ref``'s: the regression
    ``median_fix / median_ref - 1`` (for a metric where higher is better, ``1 - ratio``) at
    most ``bound``. Point: pass if the estimate is within the bound. ``against``: how the
    report names the reference (default its label)."""
    fv, rv = fix.vals(metric), ref.vals(metric)
    numbers = _numbers(fix, ref, metric, fv, rv) + f", allowed {bound:.0%}"

    def gate(verdict: str, reason: str, **kw) -> Gate:
        return Gate(name, fix.stage, subject, verdict, numbers, reason,
                    against=ref.label if against is None else against,
                    kind="non-inferiority", **kw)

    ended, (ratio, r_lo, r_hi) = _median_ratio(gate, fix, ref, fv, rv, min_seeds, level,
                                                beaten=reference_beaten)
    if ended is not None:
        return ended
    if higher_is_better:
        est, lo, hi = 1.0 - ratio, 1.0 - r_hi, 1.0 - r_lo
    else:
        est, lo, hi = ratio - 1.0, r_lo - 1.0, r_hi - 1.0
    interval = non_inferiority(est, lo, hi, bound)
    pv = PASS if _le(est, bound) else FAIL
    verdict = _verdict(interval, pv, point)
    reason = {PASS: f"{_pct(est)} within the allowed {bound:.0%}",
              FAIL: f"{_pct(est)} beyond the allowed {bound:.0%}",
              INCONCLUSIVE: f"{_pct(est)}: the interval spans the allowed {bound:.0%}"}[verdict]
    if point:
        reason += " (point reading)"
    seeds, text = (None, "")
    if settle and verdict == INCONCLUSIVE:
        seeds, text = _values_settle(est, lo, hi, fix, ref, fv, rv, bound, bound, level)
    return gate(verdict, reason, estimate=est, low=lo, high=hi, point=pv, settle=text,
                seeds=seeds)


# --- limit gates (counts and medians: point gates) -------------------------------------------
def nonfinite_gate(fix: ArmEvidence, limit: int, subject: str = "") -> Gate:
    """Pass with at most ``limit`` nonfinite runs (status nonfinite, or ok with a non-finite
    loss or SSIM); untestable without a finished run."""
    n = fix.n_nonfinite + fix.n_ok_nonfinite
    extra = f" + {fix.n_ok_nonfinite} ok with a non-finite metric" if fix.n_ok_nonfinite else ""
    numbers = (f"{fix.n_nonfinite} nonfinite{extra} of {fix.n_done + fix.n_ok_nonfinite} "
               f"finished (limit {limit})")
    if not fix.n_done and not fix.n_ok_nonfinite:
        return Gate("nonfinite runs", fix.stage, subject, UNTESTABLE, numbers,
                    "no finished run", point=UNTESTABLE)
    ok = n <= limit
    v = PASS if ok else FAIL
    return Gate("nonfinite runs", fix.stage, subject, v, numbers,
                "within the limit" if ok else "above the limit", point=v)


def grad_gate(deep: ArmEvidence, shallow: ArmEvidence | None, bound: float | None,
              factor: float, subject: str = "") -> Gate:
    """Stage B's "grad_norm bounded" on ok runs: each run's max pre-clip grad norm at most
    ``bound`` (``failure.grad_norm_bound``), and their median at most ``factor`` times the
    same arm's Stage A median. Fail on either; untestable without values."""
    g_b = deep.vals(GRAD)
    g_a = shallow.vals(GRAD) if shallow is not None else ()
    med_b, med_a = _median(g_b), _median(g_a)
    numbers = (f"max {fmt(max(g_b) if g_b else math.nan)}, median {fmt(med_b)} of {len(g_b)} "
               f"ok run(s) vs Stage A median {fmt(med_a)} ({len(g_a)}); bound "
               f"{fmt(bound)}, factor {factor:g}")

    def gate(verdict: str, reason: str) -> Gate:
        return Gate("grad norm bounded", deep.stage, subject, verdict, numbers, reason,
                    against=f"{shallow.label} (Stage A)" if shallow is not None else "",
                    point=verdict)

    if not g_b:
        return gate(UNTESTABLE, f"{deep.label}: no ok run with a recorded grad norm")
    if bound is not None:
        over = sum(1 for v in g_b if not _le(v, bound))
        if over:
            return gate(FAIL, f"{over} ok run(s) above failure.grad_norm_bound {fmt(bound)}")
    if not g_a:
        return gate(UNTESTABLE, "no Stage A ok run with a recorded grad norm to compare with")
    if _le(med_b, factor * med_a):
        return gate(PASS, f"median {fmt(med_b / med_a)}x Stage A's, within {factor:g}x")
    return gate(FAIL, f"median {fmt(med_b / med_a)}x Stage A's, beyond {factor:g}x")


def missing_gate(name: str, stage: str, subject: str, why: str) -> Gate:
    """The gate of an input that is not there (no arm, no stage): untestable."""
    return Gate(name, stage, subject, UNTESTABLE, "-", why, point=UNTESTABLE)


def combine(gates: list[Gate], point: bool = False) -> tuple[str, str]:
    """A fix's verdict: any fail -> fail; else any untestable -> untestable; else any
    inconclusive -> inconclusive; else pass. ``point``: combine the point verdicts."""
    if not gates:
        return UNTESTABLE, "no gate"
    verdicts = [(g.point or g.verdict) if point else g.verdict for g in gates]

    def names(v: str) -> str:
        return ", ".join(f"{g.name}{' vs ' + g.against if g.against else ''} (stage {g.stage})"
                         for g, x in zip(gates, verdicts, strict=True) if x == v)

    if FAIL in verdicts:
        return FAIL, "fails " + names(FAIL)
    if UNTESTABLE in verdicts:
        return UNTESTABLE, "cannot be tested yet on " + names(UNTESTABLE)
    if INCONCLUSIVE in verdicts:
        return INCONCLUSIVE, "is inconclusive on " + names(INCONCLUSIVE)
    return PASS, "passes every gate"


# --- the premise -----------------------------------------------------------------------------
PRESENT, ABSENT, NOT_SETTLED = "present", "shown absent", "not settled"
PREMISE_VALUES = (PRESENT, ABSENT, NOT_SETTLED)


@dataclass(frozen=True)
class Premise:
    """Does the control fail at the premise's rate? ``value`` is one of
    :data:`PREMISE_VALUES`; ``bounds``: stage -> (failures, finished runs, upper bound);
    ``seeds``: control runs per stage, none failing, that would show it absent."""

    value: str
    text: str
    point: str
    bounds: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    seeds: int | None = None


def premise(controls: dict[str, ArmEvidence | None], rate: float, level: float,
            point: bool = False) -> Premise:
    """The premise column of the outcome table (strategy: "e.g., 3/10 runs explode").

    *shown absent*: the control's one-sided Wilson upper bound at ``level`` is below ``rate``
    in every stage; *present*: the control failed somewhere and is not shown absent; *not
    settled*: no failure, and a bound not below (or a stage without a finished control run).
    Point reading: present if the control failed somewhere, absent if it finished runs in
    every stage without a failure.
    """
    bounds = {s: (c.n_instability, c.n_done, stats.wilson_bounds(c.n_instability, c.n_done,
                                                                 level)[1])
              for s, c in controls.items() if c is not None and c.n_done}
    complete = len(bounds) == len(controls)
    failed = any(k for k, _, _ in bounds.values())
    shown = complete and all(u < rate for _, _, u in bounds.values())
    pv = PRESENT if failed else ABSENT if complete else NOT_SETTLED
    value = pv if point else (ABSENT if shown else PRESENT if failed else NOT_SETTLED)
    counts = ", ".join(f"Stage {s} {k}/{n}" + ("" if point else f" (upper bound {u:.3g})")
                       for s, (k, n, u) in bounds.items()) or "no finished control run"
    missing = [s for s in controls if s not in bounds]
    seeds = power.premise_absent_seeds(rate, level)
    if value == ABSENT and point:
        text = (f"the control had no instability failure in any stage ({counts}): the premise "
                "did not appear (point reading)")
    elif value == ABSENT:
        text = (f"the control's failure rate is shown below the premise's {rate:.0%} in every "
                f"stage ({counts}, one-sided {level:.0%} Wilson)")
        if failed:
            text += ": the instability exists but far below the premise's rate"
    elif value == PRESENT:
        text = f"the control failed ({counts}) and is not shown below {rate:.0%}" if not point \
            else f"the control failed ({counts}) (point reading)"
    else:
        text = (f"the control had no instability failure ({counts}"
                + (f"; no finished control run in Stage {', '.join(missing)}" if missing else "")
                + f") and is not shown below {rate:.0%}: {seeds} control runs per stage without "
                "a failure would show the premise absent; a failure makes it present")
    return Premise(value, text, pv, bounds, seeds)
