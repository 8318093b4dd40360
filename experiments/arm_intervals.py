"""The per-arm intervals of the experiment report: descriptions of each arm, never comparisons of arms.

* Latency quantiles (p50/p95/p99) per arm: percentile bootstrap. The bootstrap distribution of a
  sample quantile (the ``k``-th order statistic, ``k = ceil(n q)``) is known exactly --
  ``P(X*_(k) <= x_(j)) = P(Binomial(n, j/n) >= k)`` -- so replicates are drawn from it directly: the
  same answer as resampling the data ``B`` times, at ``O(n + B)`` instead of ``O(n B)``.
* Proportions (accuracy from feedback, shadow agreement): the Wilson score interval.
* ``Interval`` and the sample quantile (an order statistic) are the bench harness's (``tunestack.bench.stats``).

Each treats every request as independent. Sticky users are not (a user's requests are alike), so on real
traffic these intervals are too narrow: the report shows them to describe an arm; whether arms differ is
the anytime-valid judge's to say (``experiments.judge``), with users as the units.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from tunestack.bench.stats import Interval, quantile


def _order_stat_rank(n: int, q: float) -> int:
    return min(max(math.ceil(n * q - 1e-12), 1), n)


def bootstrap_quantile(x: np.ndarray, q: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` bootstrap replicates of the sample ``q``-quantile of ``x`` (exact distribution)."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    n = len(xs)
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    k = _order_stat_rank(n, q)
    # cdf[j] = P(X*_(k) <= x_(j+1)) = P(Binomial(n, (j+1)/n) >= k), j = 0..n-1
    cdf = sps.binom.sf(k - 1, n, np.arange(1, n + 1) / n)
    cdf[-1] = 1.0
    idx = np.searchsorted(cdf, rng.random(resamples), side="right")
    return xs[np.minimum(idx, n - 1)]


def _percentile_interval(estimate: float, reps: np.ndarray, alpha: float) -> Interval:
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high))


def quantile_ci(x: np.ndarray, q: float, alpha: float = 0.05, resamples: int = 2000,
                rng: np.random.Generator | None = None) -> Interval:
    """Percentile-bootstrap interval for the ``q``-quantile of ``x``."""
    rng = rng or np.random.default_rng()
    return _percentile_interval(quantile(x, q), bootstrap_quantile(x, q, resamples, rng), alpha)


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> Interval:
    """Wilson score interval for a proportion ``successes / n``."""
    if n <= 0:
        raise ValueError("a proportion needs n >= 1")
    z = float(sps.norm.ppf(1 - alpha / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))
