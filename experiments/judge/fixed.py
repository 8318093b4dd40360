"""The router's old fixed-horizon tests (``experiments/fixed_horizon.py``), vectorised over simulated runs.

Same formulas as ``stats.py`` -- the exact-bootstrap normal interval for the p99 difference, Welch's t
for the mean, Newcombe's hybrid score interval for accuracy, Pearson's chi-square for the label mix --
at the report's ``alpha`` per metric, evaluated for many simulated experiments at once, so the
simulation can show what reading them at every look does. ``tests/test_judge_simulate.py`` checks each
against ``stats.py`` on the same data.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import stats as sps

from experiments.fixed_horizon import _order_stat_rank


@functools.lru_cache(maxsize=512)
def _bootstrap_weights(n: int, q: float) -> np.ndarray:
    """P(the bootstrap q-quantile is the j-th order statistic), j = 1..n (as ``quantile_bootstrap_var``)."""
    cdf = sps.binom.sf(_order_stat_rank(n, q) - 1, n, np.arange(1, n + 1) / n)
    cdf[-1] = 1.0
    return np.diff(cdf, prepend=0.0)


def quantile_diff_significant(sorted_c: np.ndarray, sorted_t: np.ndarray, q: float, alpha: float) -> np.ndarray:
    """Per row: the sign (+1/-1, 0: none) of a significant ``Q_t(q) - Q_c(q)`` (``stats.quantile_diff_ci``)."""
    n = sorted_c.shape[-1]
    w = _bootstrap_weights(n, q)
    k = _order_stat_rank(n, q)
    var = np.zeros(sorted_c.shape[:-1])
    for xs in (sorted_c, sorted_t):
        mean = xs @ w
        var = var + (xs * xs) @ w - mean * mean
    diff = sorted_t[..., k - 1] - sorted_c[..., k - 1]
    half = float(sps.norm.ppf(1 - alpha / 2)) * np.sqrt(np.maximum(var, 0.0))
    return np.sign(diff) * (np.abs(diff) > half)


def welch_significant(n, sum_c, sumsq_c, sum_t, sumsq_t, alpha: float) -> np.ndarray:
    """Per row: the sign of a significant mean difference by Welch's t interval (``stats.mean_diff_ci``)."""
    mc, mt = sum_c / n, sum_t / n
    vc = (sumsq_c - n * mc * mc) / (n - 1) / n
    vt = (sumsq_t - n * mt * mt) / (n - 1) / n
    df = (vc + vt) ** 2 / (vc**2 / (n - 1) + vt**2 / (n - 1))
    half = sps.t.ppf(1 - alpha / 2, df) * np.sqrt(vc + vt)
    diff = mt - mc
    return np.sign(diff) * (np.abs(diff) > half)


def _wilson(k, n, z):
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


def newcombe_significant(k_c, n_c, k_t, n_t, alpha: float) -> np.ndarray:
    """Per row: the sign of a significant proportion difference (``stats.proportion_diff_ci``)."""
    z = float(sps.norm.ppf(1 - alpha / 2))
    pc, lc, hc = _wilson(k_c, n_c, z)
    pt, lt, ht = _wilson(k_t, n_t, z)
    d = pt - pc
    low = d - np.sqrt((pt - lt) ** 2 + (hc - pc) ** 2)
    high = d + np.sqrt((ht - pt) ** 2 + (pc - lc) ** 2)
    return np.where(low > 0, 1.0, np.where(high < 0, -1.0, 0.0))


def chi_square_significant(counts_c: np.ndarray, counts_t: np.ndarray, alpha: float) -> np.ndarray:
    """Per row: Pearson's chi-square (no continuity correction) on arm x label rejects (``stats.label_chi_square``)."""
    table = np.stack([counts_c, counts_t], axis=-2).astype(np.float64)  # (..., 2 arms, k labels)
    total = table.sum(axis=(-2, -1), keepdims=True)
    expected = table.sum(axis=-1, keepdims=True) * table.sum(axis=-2, keepdims=True) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0).sum(axis=(-2, -1))
    used = (table.sum(axis=-2) > 0).sum(axis=-1)
    return (used >= 2) & (sps.chi2.sf(stat, np.maximum(used - 1, 1)) < alpha)
