"""How many seeds settle a gate: power estimates for the decision's gates (pure numbers).

Two uses, one set of functions:

- *before the study runs* (the dry run, ``experiments/README.md``): for a seed count per arm,
  the smallest failure-rate and loss differences the gates can settle, and the seeds the
  premise's effect (a control failing at the premise's rate against a fix that never fails)
  needs;
- *after* (the report): for each inconclusive gate, about how many seeds per arm would settle
  it at the observed effect.

A gate is *settled* when it passes or fails (:mod:`ptychostab.analysis.gates`). Power is the
probability of settling, :data:`POWER` (80%) unless told otherwise.

- Failure rates (Newcombe's interval of ``rate_control - rate_fix``): exact, by summing the
  binomial probabilities of every pair of counts at the observed (or assumed) rates.
- Median ratios (bootstrap bounds): a normal approximation. An interval's half-width shrinks as
  ``sqrt(1/n_1 + 1/n_2)``; the seeds needed are those at which the observed effect lies
  ``(z_level + z_power)`` half-widths (scaled to ``z_level``) from the decision's threshold.
  Before the study, the half-width of a median is taken as ``1.2533 s / sqrt(n)`` for a
  seed-to-seed relative spread ``s`` of the loss (the normal median's efficiency; ``s`` is an
  assumption, :data:`ASSUMED_LOSS_SPREAD`, stated wherever the number is).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ptychostab.analysis import stats

POWER = 0.80
#: the most seeds per arm an estimate looks at; beyond: "more than MAX_SEEDS"
MAX_SEEDS = 1000
#: seed-to-seed relative spread (standard deviation of log loss) assumed before the study
ASSUMED_LOSS_SPREAD = 0.05
#: asymptotic standard error of a normal sample's median, in units of sigma / sqrt(n)
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2.0)


def _support(n: int, p: float) -> np.ndarray:
    """The counts of Binomial(n, p) holding all but a negligible mass (+-8 sd, whole range for
    small n): the power sums need no more."""
    p = min(max(p, 0.0), 1.0)
    sd = math.sqrt(n * p * (1 - p))
    lo, hi = math.floor(n * p - 8 * sd - 1), math.ceil(n * p + 8 * sd + 1)
    return np.arange(max(0, lo), min(n, hi) + 1)


def rate_settle_probabilities(n: int, p_control: float, p_fix: float, level: float,
                              min_effect: float) -> tuple[float, float]:
    """``(P(pass), P(fail))`` of the failure-rate superiority gate with ``n`` finished runs
    per arm when the control fails at ``p_control`` and the fix at ``p_fix``.

    Pass: the lower bound of ``rate_control - rate_fix`` > 0; fail (else): its upper bound
    < ``min_effect`` (Newcombe, continuity-corrected, one-sided at ``level``). The sum runs over
    every pair of counts with a non-negligible probability.
    """
    from scipy.stats import binom

    kc, kf = _support(n, p_control), _support(n, p_fix)
    _, lo, hi = stats.newcombe_difference(kc[:, None], n, kf[None, :], n, level)
    weight = (binom.pmf(kc, n, min(max(p_control, 0.0), 1.0))[:, None]
              * binom.pmf(kf, n, min(max(p_fix, 0.0), 1.0))[None, :])
    passed = lo > 0
    failed = ~passed & (hi < min_effect)
    return float(weight[passed].sum()), float(weight[failed].sum())


#: a count of runs "settles" a gate only when the next STABLE_WINDOW counts do too: the power
#: of a discrete test saw-tooths with n (0.3 vs 0: 84% at 18 runs, 72% at 19)
STABLE_WINDOW = 10


@functools.lru_cache(maxsize=1024)
def seeds_for_rates(p_control: float, p_fix: float, level: float, min_effect: float,
                    power: float = POWER, start: int = 1) -> int | None:
    """Finished runs per arm from which the failure-rate gate settles (passes or fails) with
    probability >= ``power`` at these rates: the first count >= ``start`` whose next
    :data:`STABLE_WINDOW` counts all reach ``power`` as well (counts above 200 are searched in
    steps of 2%, where the saw-tooth has flattened); None when not within :data:`MAX_SEEDS`."""
    def settles(m: int) -> bool:
        return sum(rate_settle_probabilities(m, p_control, p_fix, level, min_effect)) >= power

    n = max(1, start)
    while n <= MAX_SEEDS:
        if settles(n) and (n > 200 or all(settles(m) for m in range(
                n + 1, n + STABLE_WINDOW + 1))):
            return n
        n += 1 if n < 200 else max(1, n // 50)
    return None


def smallest_rate_difference(n: int, p_control: float, level: float) -> float | None:
    """The smallest ``rate_control - rate_fix`` the gate shows (lower bound > 0) with ``n``
    runs per arm when the control fails ``round(p_control n)`` times; None if even a fix with
    no failure is not shown lower."""
    k_c = int(round(p_control * n))
    for k_f in range(k_c - 1, -1, -1):  # the largest fix count that still passes
        if stats.newcombe_difference(k_c, n, k_f, n, level)[1] > 0:
            return (k_c - k_f) / n
    return None


def premise_absent_seeds(premise_rate: float, level: float) -> int | None:
    """Control runs per stage, all without an instability failure, whose Wilson upper bound
    falls below ``premise_rate`` (0.3 at 95%: 7)."""
    for n in range(1, MAX_SEEDS + 1):
        if stats.wilson_bounds(0, n, level)[1] < premise_rate:
            return n
    return None


def _z_power(power: float) -> float:
    return stats.z_of(power)


def seeds_for_bounds(estimate: float, low: float, high: float, n_a: int, n_b: int,
                     above: float | None, below: float | None, level: float,
                     power: float = POWER) -> int | None:
    """Values per arm (equal in both) that settle a gate judged on bounds of ``estimate``,
    at the observed estimate (normal approximation; an estimate).

    The gate settles when the low bound exceeds ``above`` or the high bound falls below
    ``below`` (either may be None: not a way to settle). The observed half-widths
    ``estimate - low`` and ``high - estimate`` (from ``n_a`` and ``n_b`` values) are scaled
    by ``sqrt(2 / n) / sqrt(1 / n_a + 1 / n_b)``; the effect must lie
    ``(z_level + z_power) / z_level`` scaled half-widths from the threshold. None when the
    observed estimate cannot settle it (it lies on the wrong side of both thresholds, or
    the bounds are not finite).
    """
    if not all(math.isfinite(v) for v in (estimate, low, high)) or n_a < 1 or n_b < 1:
        return None
    z_l = stats.z_of(level)
    c = (z_l + _z_power(power)) / z_l
    s = 1.0 / n_a + 1.0 / n_b
    options = []
    for threshold, width, gap in ((above, estimate - low, estimate - (above or 0.0)),
                                  (below, high - estimate, (below or 0.0) - estimate)):
        if threshold is None or gap <= 0:
            continue
        if width <= 0:
            options.append(max(n_a, n_b))
            continue
        options.append(math.ceil(2.0 / (s * (gap / (c * width)) ** 2)))
    if not options:
        return None
    return min(MAX_SEEDS + 1, max(min(options), 1))


def seeds_from_values(values_needed: int | None, n_values: int, n_runs: int) -> int | None:
    """Seeds per arm that give ``values_needed`` finite values at the observed fraction
    ``n_values / n_runs`` of runs giving one."""
    if values_needed is None or n_values <= 0 or n_runs <= 0:
        return None
    return math.ceil(values_needed * n_runs / n_values)


def smallest_loss_difference(n: int, level: float, power: float = POWER,
                             spread: float = ASSUMED_LOSS_SPREAD) -> float:
    """The relative median-loss difference the loss gate settles with probability ``power``
    at ``n`` values per arm, for a seed-to-seed relative spread ``spread`` (normal
    approximation: ``(z_level + z_power) * 1.2533 * spread * sqrt(2 / n)``)."""
    return (stats.z_of(level) + _z_power(power)) * MEDIAN_SE_FACTOR * spread * math.sqrt(2 / n)


def seeds_for_loss_difference(effect: float, level: float, power: float = POWER,
                              spread: float = ASSUMED_LOSS_SPREAD) -> int:
    """Values per arm at which :func:`smallest_loss_difference` reaches ``effect``."""
    x = (stats.z_of(level) + _z_power(power)) * MEDIAN_SE_FACTOR * spread / effect
    return math.ceil(2 * x * x)


@dataclass(frozen=True)
class StudyPower:
    """What the gates can settle at ``seeds`` seeds per arm, told before the study runs."""

    seeds: int
    level: float
    premise_rate: float
    min_effect_rate: float
    min_effect_loss: float
    spread: float
    power: float
    rate_difference: float | None  # smallest shown with the control at the premise's rate
    perfect_fix_power: float  # P(pass): control at the premise's rate, fix never failing
    perfect_fix_seeds: int | None  # seeds per arm for `power` in that case
    premise_absent_seeds: int | None
    loss_difference: float  # smallest relative median difference settled with `power`
    min_effect_loss_seeds: int  # seeds per arm to settle min_effect.loss with `power`

    def lines(self) -> list[str]:
        """The statement, one line each (the dry run and experiments/README.md)."""
        n, lvl, pr = self.seeds, self.level, self.premise_rate
        k = int(round(pr * n))
        rate = (f"a fix at most {k - round(self.rate_difference * n)}/{n} failures against a "
                f"control at {k}/{n} (a difference of {self.rate_difference:.0%})"
                if self.rate_difference is not None else
                f"none: even 0/{n} against a control at {k}/{n} stays inconclusive")
        seeds = (f"{self.perfect_fix_seeds}" if self.perfect_fix_seeds is not None
                 else f"more than {MAX_SEEDS}")
        return [
            f"Power at {n} seeds per arm (gates at {lvl:.0%}, one-sided; power "
            f"{self.power:.0%}; estimates):",
            f"- failure rate: the smallest improvement shown is {rate}; a fix that never fails "
            f"against a control failing at the premise's {pr:.0%} passes with probability "
            f"{self.perfect_fix_power:.0%}; {self.power:.0%} needs {seeds} seeds per arm",
            f"- premise: {self.premise_absent_seeds} control seeds per stage without a failure "
            f"show its rate below {pr:.0%}",
            f"- loss: a median difference of about {self.loss_difference:.1%} is settled (at a "
            f"seed-to-seed spread of {self.spread:.0%}, assumed); the smallest that matters "
            f"(min_effect.loss {self.min_effect_loss:.0%}) needs about "
            f"{self.min_effect_loss_seeds} seeds per arm",
        ]


def study_power(seeds: int, level: float, premise_rate: float, min_effect_rate: float,
                min_effect_loss: float, spread: float = ASSUMED_LOSS_SPREAD,
                power: float = POWER) -> StudyPower:
    """:class:`StudyPower` for ``seeds`` seeds per arm (all runs assumed to finish)."""
    p_pass, _ = rate_settle_probabilities(seeds, premise_rate, 0.0, level, min_effect_rate)
    return StudyPower(
        seeds=seeds, level=level, premise_rate=premise_rate, min_effect_rate=min_effect_rate,
        min_effect_loss=min_effect_loss, spread=spread, power=power,
        rate_difference=smallest_rate_difference(seeds, premise_rate, level),
        perfect_fix_power=p_pass,
        perfect_fix_seeds=seeds_for_rates(premise_rate, 0.0, level, min_effect_rate, power),
        premise_absent_seeds=premise_absent_seeds(premise_rate, level),
        loss_difference=smallest_loss_difference(seeds, level, power, spread),
        min_effect_loss_seeds=seeds_for_loss_difference(min_effect_loss, level, power, spread))
