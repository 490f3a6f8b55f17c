"""Statistics against numpy and hand computations."""

import math

import numpy as np
import pytest

from ptychostab.analysis import stats


@pytest.mark.parametrize("n", [1, 2, 5, 10, 11])
def test_spread_matches_numpy(n):
    x = np.random.default_rng(n).lognormal(size=n)
    s = stats.spread(x)
    assert s.n == n
    assert s.median == np.median(x)
    assert s.q25 == np.percentile(x, 25) and s.q75 == np.percentile(x, 75)
    assert s.iqr == pytest.approx(np.percentile(x, 75) - np.percentile(x, 25))


def test_spread_hand_example_and_non_finite_dropped():
    s = stats.spread([4.0, 1.0, None, 3.0, float("nan"), 2.0, float("inf")])
    # finite sample 1, 2, 3, 4: median 2.5, q25 = 1 + 0.75 * 1 = 1.75, q75 = 3.25
    assert (s.n, s.median, s.q25, s.q75, s.iqr) == (4, 2.5, 1.75, 3.25, 1.5)


def test_spread_empty_is_nan():
    s = stats.spread([None, float("nan")])
    assert s.n == 0 and math.isnan(s.median) and math.isnan(s.iqr)


def _wilson_by_quadratic(k, n, z=1.959963984540054):
    # bounds solve (p_hat - p)^2 = z^2 p (1 - p) / n  <=>  a p^2 + b p + c = 0
    p_hat = k / n
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    return tuple(sorted(np.roots([a, b, c]).real))


def test_wilson_three_of_ten_by_hand():
    lo, hi = stats.wilson_interval(3, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.1078, 0.6032)  # textbook value
    assert (lo, hi) == pytest.approx(_wilson_by_quadratic(3, 10), abs=1e-12)


@pytest.mark.parametrize("k,n", [(1, 7), (5, 10), (9, 10), (17, 40)])
def test_wilson_matches_quadratic_solution(k, n):
    assert stats.wilson_interval(k, n) == pytest.approx(_wilson_by_quadratic(k, n), abs=1e-12)


def test_wilson_edges():
    z2 = 1.959963984540054 ** 2
    assert stats.wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    assert stats.wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2)), 1.0)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)


def test_bootstrap_median_ci_equals_plain_resampling_of_ranks_with_seed_0():
    x = np.random.default_rng(3).normal(size=13)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, x.size, size=(2000, x.size))
    expected = np.percentile(np.median(np.sort(x)[idx], axis=1), [2.5, 97.5])
    assert stats.bootstrap_median_ci(x) == pytest.approx(tuple(expected), abs=0)


def test_bootstrap_median_ci_properties():
    x = np.arange(20.0)
    lo, hi = stats.bootstrap_median_ci(x)
    assert lo <= np.median(x) <= hi
    assert stats.bootstrap_median_ci(x) == stats.bootstrap_median_ci(x)  # fixed seed
    assert stats.bootstrap_median_ci(x, seed=1) != stats.bootstrap_median_ci(x, seed=0)
    assert stats.bootstrap_median_ci([2.5]) == (2.5, 2.5)
    assert all(math.isnan(v) for v in stats.bootstrap_median_ci([]))


def test_bootstrap_chunking_gives_same_numbers(monkeypatch):
    x = np.random.default_rng(5).normal(size=50)
    whole = stats.bootstrap_median_ci(x, reps=300)
    stats._median_ranks.cache_clear()
    monkeypatch.setattr(stats, "_MAX_BOOT_CELLS", 50 * 7)  # 7 resamples per chunk
    assert stats.bootstrap_median_ci(x, reps=300) == pytest.approx(whole)
    stats._median_ranks.cache_clear()


@pytest.mark.parametrize("n", [2, 7, 10])
def test_bootstrap_medians_of_even_and_odd_samples(n):
    x = np.random.default_rng(n).normal(size=n)
    idx = np.random.default_rng(4).integers(0, n, size=(500, n))
    expected = np.median(np.sort(x)[idx], axis=1)
    assert stats.bootstrap_medians(x, reps=500, seed=4) == pytest.approx(expected, abs=0)


def test_column_summaries_equal_the_per_column_functions():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(12, 4))
    x[3, 1] = np.nan
    x[:11, 2] = np.inf  # one finite value left
    x[:, 3] = np.nan  # none
    cols = stats.column_summaries(x)
    for j in range(4):
        s, ci = stats.spread(x[:, j]), stats.bootstrap_median_ci(x[:, j])
        assert cols["n"][j] == s.n
        got = [cols[k][j] for k in ("median", "q25", "q75", "iqr", "ci_lo", "ci_hi")]
        assert got == pytest.approx([s.median, s.q25, s.q75, s.iqr, *ci], abs=0, nan_ok=True)


def test_bootstrap_median_diff():
    x, y = np.array([1.1, 1.2, 1.3, 1.4, 1.5]), np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    est, lo, hi = stats.bootstrap_median_diff(x, y)
    assert est == pytest.approx(0.3)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.5)  # y constant: x's range
    est, lo, hi = stats.bootstrap_median_diff(x, y, relative=False)
    assert est == pytest.approx(0.3) and lo <= est <= hi
    assert all(math.isnan(v) for v in stats.bootstrap_median_diff([], y))
    assert all(math.isnan(v) for v in stats.bootstrap_median_diff(x, [0.0]))  # zero reference


def test_kaplan_meier_hand_example():
    # six runs: failures at 1, 2, 3; censored at 2, 4, 5
    t, s = stats.kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 0])
    assert t.tolist() == [1, 2, 3]
    # S(1) = 5/6; S(2) = 5/6 * 4/5 (the run censored at 2 is still at risk); S(3) = .. * 2/3
    assert s == pytest.approx([5 / 6, 4 / 6, 4 / 6 * 2 / 3])
    assert stats.km_median(t, s) == 3.0
    assert stats.km_final(s) == pytest.approx(4 / 9)


def test_kaplan_meier_no_event_and_median_not_reached():
    t, s = stats.kaplan_meier([50, 50, 50], [0, 0, 0])
    assert t.size == 0 and math.isnan(stats.km_median(t, s)) and stats.km_final(s) == 1.0
    t, s = stats.kaplan_meier([5, 50, 50, 50, float("nan")], [1, 0, 0, 0, 1])
    assert s.tolist() == [0.75] and math.isnan(stats.km_median(t, s))


def test_kaplan_meier_all_fail():
    t, s = stats.kaplan_meier([3, 1, 2, 2], [1, 1, 1, 1])
    assert t.tolist() == [1, 2, 3] and s == pytest.approx([0.75, 0.25, 0.0])
    assert stats.km_median(t, s) == 2.0


def test_order_statistic_median_ci_coverage():
    from ptychostab.analysis.stats import order_statistic_median_ci

    three = order_statistic_median_ci([3.0, 1.0, 2.0])
    assert three.text().startswith("n/a at 95%")  # [min, max] of 3 is only 75%
    six = order_statistic_median_ci([6, 5, 4, 3, 2, 1])
    assert (six.lo, six.hi) == (1.0, 6.0) and six.coverage == pytest.approx(1 - 2 / 64)
    ten = order_statistic_median_ci(range(10))
    assert (ten.lo, ten.hi) == (1.0, 8.0) and ten.coverage == pytest.approx(1 - 2 * 11 / 1024)


# --- one-sided bounds of the decision's gates (issue 19) ---------------------------------------
def test_wilson_one_sided_pins():
    """0/10 is shown below the premise's 0.3 (upper 0.21); 0/5 is not (0.35)."""
    assert stats.z_of(0.95) == pytest.approx(1.6448536269514722)
    lo, hi = stats.wilson_bounds(0, 10, 0.95)
    assert lo == 0.0 and round(hi, 2) == 0.21 and hi < 0.3
    assert round(stats.wilson_bounds(0, 5, 0.95)[1], 2) == 0.35
    assert stats.wilson_bounds(0, 5, 0.95)[1] > 0.3
    # one-sided bounds at 0.95 are the two-sided 90% interval
    assert stats.wilson_bounds(3, 10, 0.95) == stats.wilson_interval(3, 10, z=stats.z_of(0.95))


@pytest.mark.parametrize("k,n", [(0, 1), (0, 10), (3, 10), (1, 30), (7, 24), (10, 10), (5, 7)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.975])
def test_wilson_bounds_equal_scipy(k, n, level):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=2 * level - 1, method="wilson")
    assert stats.wilson_bounds(k, n, level) == pytest.approx((ci.low, ci.high), abs=1e-12)
    cc = binomtest(k, n).proportion_ci(confidence_level=2 * level - 1, method="wilsoncc")
    assert stats.wilson_cc_interval(k, n, stats.z_of(level)) == pytest.approx(
        (cc.low, cc.high), abs=1e-12)


# Newcombe (1998), Statistics in Medicine 17:873-890, Table II: 95% intervals for p1 - p2,
# method 10 (score, no correction) and method 11 (continuity-corrected).
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339), (0.0428, 0.3422)),
    ((9, 10, 3, 10), (0.1705, 0.8090), (0.1013, 0.8387)),
    ((6, 7, 2, 7), (0.0582, 0.8062), (-0.0290, 0.8423)),
    ((5, 56, 0, 29), (-0.0381, 0.1926), (-0.0667, 0.2037)),
    ((0, 10, 0, 20), (-0.1611, 0.2775), (-0.2005, 0.3445)),
    ((0, 10, 0, 10), (-0.2775, 0.2775), (-0.3445, 0.3445)),
    ((10, 10, 0, 20), (0.6791, 1.0), (0.6014, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0), (0.5128, 1.0)),
]


@pytest.mark.parametrize("counts,plain,corrected", NEWCOMBE_TABLE_II)
def test_newcombe_reproduces_the_published_table(counts, plain, corrected):
    k1, n1, k2, n2 = counts
    est, lo, hi = stats.newcombe_difference(k1, n1, k2, n2, 0.975, correction=False)
    assert est == pytest.approx(k1 / n1 - k2 / n2)
    assert (round(lo, 4), round(hi, 4)) == plain
    _, lo, hi = stats.newcombe_difference(k1, n1, k2, n2, 0.975)
    assert (round(lo, 4), round(hi, 4)) == corrected


def test_newcombe_is_vectorised_and_empty_is_nan():
    k = np.arange(6)
    d, lo, hi = stats.newcombe_difference(k[:, None], 5, k[None, :], 5, 0.95)
    for i in range(6):
        for j in range(6):
            assert (d[i, j], lo[i, j], hi[i, j]) == pytest.approx(
                stats.newcombe_difference(i, 5, j, 5, 0.95))
    assert all(math.isnan(v) for v in stats.newcombe_difference(1, 0, 1, 3))


def test_newcombe_agrees_with_fishers_exact_test_on_small_tables():
    """The gate's "shown lower" (low bound > 0, one-sided 95%) against scipy's one-sided exact
    test at 5%: the corrected interval is the conservative one, as the exact test is: it never
    claims a difference Fisher's test does not, at the strategy's 5-10 seeds per arm."""
    from scipy.stats import fisher_exact

    disagree = []
    for n in (5, 10):
        for kc in range(n + 1):
            for kf in range(kc):
                shown = stats.newcombe_difference(kc, n, kf, n, 0.95)[1] > 0
                p = fisher_exact([[kc, n - kc], [kf, n - kf]], alternative="greater").pvalue
                if shown and p >= 0.05:
                    disagree.append((kc, kf, n, p))
    assert disagree == []
    # the strategy's 3/10 against a perfect fix: inconclusive by both
    assert stats.newcombe_difference(3, 10, 0, 10, 0.95)[1] < 0
    assert fisher_exact([[3, 7], [0, 10]], alternative="greater").pvalue > 0.05


def test_median_ratio_bounds_are_the_bootstrap_quantiles():
    x, y = np.array([1.0, 1.2, 0.9, 1.1, 1.05]), np.array([2.0, 2.2, 1.9, 2.1])
    est, lo, hi = stats.median_ratio_bounds(x, y, 0.95)
    assert est == pytest.approx(np.median(x) / np.median(y))
    bx, by = stats.bootstrap_medians(x, seed=0), stats.bootstrap_medians(y, seed=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(bx / by, [5.0, 95.0])))
    assert lo <= est <= hi
    assert all(math.isnan(v) for v in stats.median_ratio_bounds([], y))
    assert math.isnan(stats.median_ratio_bounds(x, [0.0, 0.0])[1])  # a zero reference
    # the same sample against itself: the bounds straddle 1
    _, lo, hi = stats.median_ratio_bounds(x, x, 0.95)
    assert lo < 1.0 < hi
