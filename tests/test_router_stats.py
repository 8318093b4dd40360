"""The report's per-arm intervals, checked by simulation: the exact quantile bootstrap against resampling,
the quantile interval's coverage, the Wilson interval's known values. (Whether arms differ is the judge's:
tests/test_judge_report.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments import arm_intervals as stats

ALPHA = 0.05
MU, SIGMA = math.log(0.010), 0.5  # latency ~ lognormal, median 10 ms


def test_exact_quantile_bootstrap_matches_resampling():
    rng = np.random.default_rng(0)
    x = rng.lognormal(MU, SIGMA, 200)
    for q in (0.5, 0.95, 0.99):
        brute = np.quantile(x[rng.integers(0, len(x), (20_000, len(x)))], q, axis=1, method="inverted_cdf")
        fast = stats.bootstrap_quantile(x, q, 20_000, rng)
        # same distribution: same mean and spread, and the same support (order statistics of x)
        assert set(np.unique(fast)) <= set(x)
        assert fast.mean() == pytest.approx(brute.mean(), rel=0.01)
        assert fast.std() == pytest.approx(brute.std(), rel=0.05)


def test_quantile_ci_covers_true_quantile():
    rng = np.random.default_rng(1)
    true_p95 = math.exp(MU + SIGMA * sps.norm.ppf(0.95))
    cis = [stats.quantile_ci(rng.lognormal(MU, SIGMA, 500), 0.95, ALPHA, 500, rng) for _ in range(300)]
    coverage = np.mean([c.low <= true_p95 <= c.high for c in cis])
    assert 0.91 <= coverage <= 0.99


def test_wilson_known_values_and_coverage():
    w = stats.wilson_ci(0, 10)
    assert w.low == 0 and w.high == pytest.approx(0.2775, abs=5e-4)
    w = stats.wilson_ci(56, 70)  # Newcombe (1998), example (a)'s first proportion: 56/70 -> [0.6918, 0.8770]
    assert (w.low, w.high) == pytest.approx((0.6918, 0.8770), abs=5e-4)
    rng = np.random.default_rng(2)
    k = rng.binomial(200, 0.8, 1000)
    coverage = np.mean([(c := stats.wilson_ci(int(x), 200)).low <= 0.8 <= c.high for x in k])
    assert 0.93 <= coverage <= 0.97, coverage
    with pytest.raises(ValueError, match="n >= 1"):
        stats.wilson_ci(0, 0)
