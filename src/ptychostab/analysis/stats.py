"""Small, pure statistics for sweep aggregation (rliable-style: explicit defaults, no globals).

Conventions, fixed here once for the whole study:

- Quantiles use NumPy's default ``linear`` interpolation (Hyndman & Fan type 7).
- Non-finite values (NaN, inf) are dropped before any statistic; the count actually used
  is returned where it matters.
- Bootstrap intervals are percentile intervals from ``B = 2000`` resamples drawn with
  ``numpy.random.default_rng(seed)``, ``seed = 0`` by default. Every call seeds its own
  generator, so a result never depends on call order or on which other arms exist, and two
  metrics of the same arm (same ``n``) are resampled with the same indices (a paired
  bootstrap); the resampled ranks are cached per ``(n, B, seed)``.
- The Wilson interval uses ``z = 1.959963984540054`` (the 97.5% normal quantile).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SEED = 0
BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95
Z_95 = 1.959963984540054
_MAX_BOOT_CELLS = 4_000_000  # resample matrix cells per chunk (~32 MB of float64)


def finite(values) -> np.ndarray:
    """The finite entries of ``values`` as a 1-D float array (``None`` counts as NaN)."""
    arr = np.asarray(
        [np.nan if v is None else v for v in values] if isinstance(values, list) else values,
        dtype=float,
    ).ravel()
    return arr[np.isfinite(arr)]


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of a sample; all NaN when ``n == 0``."""

    n: int
    median: float
    q25: float
    q75: float

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25


def spread(values) -> Spread:
    """Median, 25th and 75th percentiles of the finite values.

    Parameters
    ----------
    values : array_like
        Sample; non-finite entries are ignored.

    Returns
    -------
    Spread
        ``n`` finite values used, ``median``, ``q25``, ``q75`` (and the ``iqr`` property).
    """
    x = finite(values)
    if x.size == 0:
        return Spread(0, math.nan, math.nan, math.nan)
    q25, med, q75 = np.percentile(x, [25.0, 50.0, 75.0])
    return Spread(int(x.size), float(med), float(q25), float(q75))


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Parameters
    ----------
    k : int
        Number of events (failures).
    n : int
        Number of trials (finished runs). ``n == 0`` gives ``(nan, nan)``.
    z : float, default 1.959963984540054
        Normal quantile; the default gives a 95% interval.

    Returns
    -------
    (low, high) : tuple of float
        Bounds, always inside [0, 1].
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends (no rounding noise)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


@functools.lru_cache(maxsize=256)
def _median_ranks(n: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the two middle values of ``reps`` resamples of ``n`` ranks (equal for odd n).

    Resampling ranks uniformly with replacement is resampling the sample itself (a
    relabelling), so one draw serves every metric with ``n`` values: cached, read-only.
    """
    rng = np.random.default_rng(seed)
    k_lo, k_hi = (n - 1) // 2, n // 2
    lo, hi = np.empty(reps, dtype=np.intp), np.empty(reps, dtype=np.intp)
    rows = max(1, _MAX_BOOT_CELLS // n)
    for start in range(0, reps, rows):
        stop = min(reps, start + rows)
        part = np.partition(rng.integers(0, n, size=(stop - start, n)), (k_lo, k_hi), axis=1)
        lo[start:stop], hi[start:stop] = part[:, k_lo], part[:, k_hi]
    lo.flags.writeable = hi.flags.writeable = False
    return lo, hi


def bootstrap_medians(values, reps: int = BOOTSTRAP_REPS,
                      seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Medians of ``reps`` resamples (with replacement) of the finite values.

    Equal to ``np.median(np.sort(x)[idx], axis=1)`` with
    ``idx = default_rng(seed).integers(0, n, (reps, n))`` (drawn in chunks of at most
    ``_MAX_BOOT_CELLS`` cells).
    """
    x = np.sort(finite(values))
    if x.size == 0:
        return np.full(reps, np.nan)
    lo, hi = _median_ranks(int(x.size), int(reps), int(seed))
    return 0.5 * (x[lo] + x[hi])


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [alpha, 100.0 - alpha])
    return (float(lo), float(hi))


def bootstrap_median_ci(values, reps: int = BOOTSTRAP_REPS, level: float = CONFIDENCE,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the median.

    Parameters
    ----------
    values : array_like
        Sample; non-finite entries are ignored. Empty -> ``(nan, nan)``.
    reps : int, default 2000
        Bootstrap resamples.
    level : float, default 0.95
        Coverage of the interval.
    seed : int, default 0
        Seed of ``numpy.random.default_rng`` (fixed so the report is reproducible).

    Returns
    -------
    (low, high) : tuple of float
    """
    x = finite(values)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    return _percentile_interval(bootstrap_medians(x, reps, seed), level)


def column_summaries(matrix, reps: int = BOOTSTRAP_REPS, level: float = CONFIDENCE,
                     seed: int = BOOTSTRAP_SEED) -> dict[str, np.ndarray]:
    """:func:`spread` and :func:`bootstrap_median_ci` of every column of a 2-D array at once.

    Parameters
    ----------
    matrix : array_like, shape (n_runs, n_metrics)
        One column per metric; non-finite entries are ignored column by column.
    reps, level, seed
        As in :func:`bootstrap_median_ci`.

    Returns
    -------
    dict of ndarray, each of shape (n_metrics,)
        ``n, median, q25, q75, iqr, ci_lo, ci_hi``; identical to the per-column functions.
    """
    x = np.array(matrix, dtype=float, ndmin=2)
    x[~np.isfinite(x)] = np.nan
    n = np.isfinite(x).sum(axis=0)
    m = x.shape[1]
    q = np.full((3, m), np.nan)
    boot = np.full((reps, m), np.nan)
    xs = np.sort(x, axis=0)  # NaN last
    for j in np.nonzero(n)[0]:
        col = xs[: n[j], j]
        q[:, j] = np.percentile(col, [25.0, 50.0, 75.0])
        lo, hi = _median_ranks(int(n[j]), int(reps), int(seed))
        boot[:, j] = 0.5 * (col[lo] + col[hi])
    alpha = 100.0 * (1.0 - level) / 2.0
    ci = np.full((2, m), np.nan)
    if n.any():
        ci[:, n > 0] = np.percentile(boot[:, n > 0], [alpha, 100.0 - alpha], axis=0)
    return {"n": n, "median": q[1], "q25": q[0], "q75": q[2], "iqr": q[2] - q[0],
            "ci_lo": ci[0], "ci_hi": ci[1]}


def bootstrap_median_diff(values, reference, relative: bool = True,
                          reps: int = BOOTSTRAP_REPS, level: float = CONFIDENCE,
                          seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Change of the median of ``values`` against the median of ``reference``, with a CI.

    The two samples are resampled independently (unpaired: different arms are different
    runs): ``values`` with ``seed``, ``reference`` with ``seed + 1``.

    Parameters
    ----------
    values, reference : array_like
        Treatment and reference samples (non-finite entries ignored).
    relative : bool, default True
        ``median(values) / median(reference) - 1`` if true, else the difference
        ``median(values) - median(reference)``.
    reps, level, seed
        As in :func:`bootstrap_median_ci`.

    Returns
    -------
    (estimate, low, high) : tuple of float
        All NaN when either sample is empty; NaN for ``relative`` with a zero reference median.
    """
    x, y = finite(values), finite(reference)
    if x.size == 0 or y.size == 0:
        return (math.nan, math.nan, math.nan)

    def change(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return a / b - 1.0 if relative else a - b

    est = float(change(np.median(x), np.median(y)))
    bx, by = bootstrap_medians(x, reps, seed), bootstrap_medians(y, reps, seed + 1)
    samples = change(bx, by)
    if not np.all(np.isfinite(samples)):
        return (est if math.isfinite(est) else math.nan, math.nan, math.nan)
    lo, hi = _percentile_interval(samples, level)
    return (est, lo, hi)


def kaplan_meier(times, events) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival estimate.

    Parameters
    ----------
    times : array_like
        Time of failure (event) or of last observation (censored), one per run.
        Non-finite times are dropped with their event flag.
    events : array_like of bool
        True where the run failed at ``times``, False where it was censored there.
        At tied times events are counted before censorings (the usual convention).

    Returns
    -------
    (t, s) : tuple of ndarray
        Distinct event times, ascending, and the survival probability just after each.
        Empty arrays when there is no event.
    """
    t = np.asarray(times, dtype=float).ravel()
    e = np.asarray(events, dtype=bool).ravel()
    if t.shape != e.shape:
        raise ValueError("times and events differ in length")
    keep = np.isfinite(t)
    t, e = t[keep], e[keep]
    event_times, failed = np.unique(t[e], return_counts=True)
    if event_times.size == 0:
        return event_times.astype(float), np.ones(0)
    at_risk = t.size - np.searchsorted(np.sort(t), event_times, side="left")
    return event_times, np.cumprod(1.0 - failed / at_risk)


def km_median(event_times, survival) -> float:
    """Median survival time: the first event time where survival drops to 0.5 or below.

    Returns NaN when survival never reaches 0.5 (the median is not reached: fewer than half
    of the runs failed within the observed time).
    """
    s = np.asarray(survival, dtype=float)
    hit = np.nonzero(s <= 0.5)[0]
    return float(np.asarray(event_times, dtype=float)[hit[0]]) if hit.size else math.nan


def km_final(survival) -> float:
    """Survival probability after the last event (1.0 when nothing failed)."""
    s = np.asarray(survival, dtype=float)
    return float(s[-1]) if s.size else 1.0


@dataclass(frozen=True)
class MedianInterval:
    """A distribution-free interval for the median: ``[x_(k), x_(n+1-k)]`` of the sorted
    finite values, with its exact coverage ``1 - 2 P(Binom(n, 1/2) <= k - 1)``.

    ``lo``/``hi``/``coverage`` are NaN when no such interval reaches the asked level (too few
    values: fewer than 6 at 95%); :meth:`text` then says ``n/a at 95%``.
    """

    n: int
    lo: float
    hi: float
    coverage: float
    level: float

    def text(self, fmt=lambda x: f"{x:.4g}") -> str:
        if not math.isfinite(self.coverage):
            return f"n/a at {self.level:.0%} (n={self.n})"
        return f"[{fmt(self.lo)}, {fmt(self.hi)}] ({self.coverage:.1%}, n={self.n})"


def order_statistic_median_ci(values, level: float = CONFIDENCE) -> MedianInterval:
    """The narrowest symmetric order-statistic interval of the median with coverage >= level.

    Parameters
    ----------
    values : array_like
        Sample; non-finite entries are ignored.
    level : float, default 0.95
        Wanted coverage (the interval's actual coverage is returned, >= level).

    Returns
    -------
    MedianInterval
        From the binomial distribution (no assumption on the values' distribution).
    """
    from scipy.stats import binom

    x = np.sort(finite(values))
    n = int(x.size)
    best = None
    for k in range(1, n // 2 + 1):  # k-th smallest and k-th largest
        coverage = 1.0 - 2.0 * float(binom.cdf(k - 1, n, 0.5))
        if coverage < level:
            break
        best = (k, coverage)
    if best is None:
        return MedianInterval(n, math.nan, math.nan, math.nan, level)
    k, coverage = best
    return MedianInterval(n, float(x[k - 1]), float(x[n - k]), coverage, level)


# --- one-sided bounds at an evidence level (the decision's gates) ----------------------------
@functools.lru_cache(maxsize=64)
def z_of(level: float) -> float:
    """The normal quantile of ``level``: the ``z`` of a one-sided bound at that level
    (1.645 at 0.95)."""
    from scipy.stats import norm

    return float(norm.ppf(level))


def wilson_bounds(k: int, n: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """One-sided Wilson score bounds of ``k / n``: each bound holds at ``level`` on its own
    (together they are the two-sided ``2 level - 1`` interval). 0/10 at 0.95: upper 0.2129.

    Returns
    -------
    (low, high) : tuple of float
        ``(nan, nan)`` when ``n == 0``.
    """
    return wilson_interval(k, n, z=z_of(level))


def wilson_cc_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval with continuity correction (Newcombe 1998, method 4).

    Parameters
    ----------
    k, n : int
        Events and trials; ``n == 0`` gives ``(nan, nan)``.
    z : float
        Normal quantile of each bound.

    Returns
    -------
    (low, high) : tuple of float
        Inside [0, 1]; 0 at ``k == 0`` and 1 at ``k == n``.
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    lo, hi = _wilson_cc(np.array([k], dtype=float), float(n), z)
    return (float(lo[0]), float(hi[0]))


def _wilson_cc(k: np.ndarray, n: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`wilson_cc_interval` over counts ``k`` of one ``n``."""
    p = k / n
    z2, den = z * z, 2.0 * (n + z * z)
    with np.errstate(invalid="ignore"):
        lo = (2 * n * p + z2 - 1 - z * np.sqrt(np.maximum(
            z2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1), 0.0))) / den
        hi = (2 * n * p + z2 + 1 + z * np.sqrt(np.maximum(
            z2 + 2 - 1 / n + 4 * p * (n * (1 - p) - 1), 0.0))) / den
    lo = np.where(k == 0, 0.0, np.clip(lo, 0.0, 1.0))
    hi = np.where(k == n, 1.0, np.clip(hi, 0.0, 1.0))
    return lo, hi


def newcombe_difference(k1, n1: int, k2, n2: int, level: float = CONFIDENCE,
                        correction: bool = True):
    """Newcombe's hybrid score bounds of the difference of two proportions ``p1 - p2``.

    From the Wilson bounds of each proportion (with continuity correction by default:
    Newcombe 1998, method 11; without: method 10): ``lower = d - sqrt((p1 - l1)^2 +
    (u2 - p2)^2)``, ``upper = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)``, each a one-sided bound at
    ``level`` (two-sided coverage ``2 level - 1``).

    Parameters
    ----------
    k1, k2 : int or array of int
        Events of each sample (arrays broadcast: the power calculation evaluates whole grids).
    n1, n2 : int
        Trials of each sample (> 0).
    level : float, default 0.95
        Level of each one-sided bound.
    correction : bool, default True
        Continuity-corrected Wilson bounds (conservative at a few trials).

    Returns
    -------
    (estimate, low, high)
        Floats for scalar counts, arrays otherwise; NaN when a sample is empty.
    """
    scalar = np.ndim(k1) == 0 and np.ndim(k2) == 0
    if n1 <= 0 or n2 <= 0:
        nan = math.nan if scalar else np.full(np.broadcast(k1, k2).shape, np.nan)
        return (nan, nan, nan)
    z = z_of(level)
    a1, a2 = np.asarray(k1, dtype=float), np.asarray(k2, dtype=float)
    if correction:
        (l1, u1), (l2, u2) = _wilson_cc(a1, float(n1), z), _wilson_cc(a2, float(n2), z)
    else:
        l1, u1 = _wilson_vec(a1, float(n1), z)
        l2, u2 = _wilson_vec(a2, float(n2), z)
    p1, p2 = a1 / n1, a2 / n2
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    if scalar:
        return (float(d), float(lo), float(hi))
    return (d, lo, hi)


def _wilson_vec(k: np.ndarray, n: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (np.where(k == 0, 0.0, np.maximum(0.0, centre - half)),
            np.where(k == n, 1.0, np.minimum(1.0, centre + half)))


def median_ratio_bounds(values, reference, level: float = CONFIDENCE,
                        reps: int = BOOTSTRAP_REPS,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """``median(values) / median(reference)`` with one-sided percentile-bootstrap bounds.

    The samples are resampled independently (different arms are different runs), ``values``
    with ``seed`` and ``reference`` with ``seed + 1``, as :func:`bootstrap_median_diff` does;
    the low bound is the ``1 - level`` quantile of the resampled ratios, the high bound the
    ``level`` quantile (each one-sided at ``level``).

    Returns
    -------
    (estimate, low, high) : tuple of float
        NaN when either sample is empty or a reference median can be 0.
    """
    x, y = finite(values), finite(reference)
    if x.size == 0 or y.size == 0:
        return (math.nan, math.nan, math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = float(np.median(x) / np.median(y))
        samples = bootstrap_medians(x, reps, seed) / bootstrap_medians(y, reps, seed + 1)
    if not np.all(np.isfinite(samples)) or not math.isfinite(est):
        return (est if math.isfinite(est) else math.nan, math.nan, math.nan)
    lo, hi = np.percentile(samples, [100.0 * (1.0 - level), 100.0 * level])
    return (est, float(lo), float(hi))
