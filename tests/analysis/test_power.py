"""Power estimates (how many seeds settle a gate), against exact sums and a simulation."""

import math

import numpy as np
import pytest

from ptychostab.analysis import power, stats


def test_the_strategys_ten_seeds_cannot_show_the_premises_effect():
    """At 10 seeds per arm a fix that never fails against a control at 3/10 is inconclusive."""
    assert power.smallest_rate_difference(10, 0.3, 0.95) is None
    lo = stats.newcombe_difference(3, 10, 0, 10, 0.95)[1]
    assert lo < 0
    # at 24 seeds: 1/24 against 7/24 is shown lower, 2/24 is not
    assert power.smallest_rate_difference(24, 0.3, 0.95) == pytest.approx(6 / 24)
    assert stats.newcombe_difference(7, 24, 1, 24, 0.95)[1] > 0
    assert stats.newcombe_difference(7, 24, 2, 24, 0.95)[1] <= 0


def test_settle_probability_is_the_binomial_sum():
    n, pc, pf = 6, 0.5, 0.0
    p_pass, p_fail = power.rate_settle_probabilities(n, pc, pf, 0.95, 0.1)
    # fix at 0/6 always; the control's count k passes when the low bound is > 0
    from scipy.stats import binom

    want = sum(binom.pmf(k, n, pc) for k in range(n + 1)
               if stats.newcombe_difference(k, n, 0, n, 0.95)[1] > 0)
    assert p_pass == pytest.approx(want) and p_fail == 0.0


def test_seeds_needed_for_the_premises_effect_checked_by_simulation():
    """The exact power at the estimated seed count, against a simulation of the gate."""
    n = power.seeds_for_rates(0.3, 0.0, 0.95, 0.10)
    assert n == 21
    rng = np.random.default_rng(7)
    reps = 4000
    kc = rng.binomial(n, 0.3, reps)
    passed = stats.newcombe_difference(kc, n, np.zeros(reps, dtype=int), n, 0.95)[1] > 0
    simulated = passed.mean()
    exact = power.rate_settle_probabilities(n, 0.3, 0.0, 0.95, 0.10)[0]
    assert simulated == pytest.approx(exact, abs=3 * math.sqrt(0.25 / reps))
    assert simulated >= power.POWER - 3 * math.sqrt(0.25 / reps)
    # fewer seeds do not reach it
    assert power.rate_settle_probabilities(n - 4, 0.3, 0.0, 0.95, 0.10)[0] < power.POWER


def test_seeds_for_rates_is_stable_beyond_the_saw_tooth():
    n = power.seeds_for_rates(0.3, 0.0, 0.95, 0.10)
    for m in range(n, n + power.STABLE_WINDOW + 1):
        assert sum(power.rate_settle_probabilities(m, 0.3, 0.0, 0.95, 0.10)) >= power.POWER
    # 18 runs reach 80% but 19 do not: not the answer
    assert power.rate_settle_probabilities(18, 0.3, 0.0, 0.95, 0.10)[0] >= power.POWER
    assert power.rate_settle_probabilities(19, 0.3, 0.0, 0.95, 0.10)[0] < power.POWER


def test_equal_rates_settle_as_a_fail():
    """No difference: the gate settles by failing (the high bound falls below min_effect)."""
    n = power.seeds_for_rates(0.0, 0.0, 0.95, 0.10)
    assert stats.newcombe_difference(0, n, 0, n, 0.95)[2] < 0.10
    assert stats.newcombe_difference(0, n - 1, 0, n - 1, 0.95)[2] >= 0.10


def test_premise_absent_seeds():
    assert power.premise_absent_seeds(0.3, 0.95) == 7
    assert stats.wilson_bounds(0, 7, 0.95)[1] < 0.3 <= stats.wilson_bounds(0, 6, 0.95)[1]


def test_seeds_for_bounds_scales_as_one_over_root_n():
    # half-width 0.1 at 4 + 4 values, effect 0.1 above the threshold 0: a power of 80% needs
    # the scaled half-width at 0.1 / ((z_.95 + z_.8) / z_.95)
    n = power.seeds_for_bounds(0.1, 0.0, 0.2, 4, 4, 0.0, None, 0.95)
    c = (stats.z_of(0.95) + stats.z_of(0.8)) / stats.z_of(0.95)
    assert n == math.ceil(2 / (0.5 * (0.1 / (c * 0.1)) ** 2))
    # a bigger effect needs fewer seeds; the wrong side of both thresholds none
    assert power.seeds_for_bounds(0.2, 0.1, 0.3, 4, 4, 0.0, None, 0.95) < n
    assert power.seeds_for_bounds(-0.1, -0.2, 0.0, 4, 4, 0.0, None, 0.95) is None
    assert power.seeds_for_bounds(-0.1, -0.2, 0.0, 4, 4, 0.0, 0.02, 0.95) is not None
    assert power.seeds_from_values(10, 5, 10) == 20


def test_loss_difference_before_the_study():
    d10 = power.smallest_loss_difference(10, 0.95)
    assert d10 == pytest.approx((stats.z_of(0.95) + stats.z_of(0.8)) * math.sqrt(math.pi / 2)
                                * 0.05 * math.sqrt(0.2))
    n = power.seeds_for_loss_difference(0.02, 0.95)
    assert power.smallest_loss_difference(n, 0.95) <= 0.02 < power.smallest_loss_difference(
        n - 1, 0.95)


def test_study_power_statement():
    p = power.study_power(10, 0.95, 0.3, 0.10, 0.02)
    text = "\n".join(p.lines())
    assert p.rate_difference is None and p.perfect_fix_seeds == 21
    assert "even 0/10 against a control at 3/10 stays inconclusive" in text
    assert "80% needs 21 seeds per arm" in text and "7 control seeds per stage" in text
    assert "assumed" in text
