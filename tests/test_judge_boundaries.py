"""The judge's boundaries against closed forms, the published formulas, and Ville's guarantee by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy import stats as sps

from experiments import fixed_horizon as stats
from experiments.judge import boundaries as b


def test_normal_mixture_boundary_is_where_the_mixture_martingale_reaches_one_over_alpha():
    # Howard et al. (2021): mixing exp(l s - l^2 v / 2) over l ~ N(0, 1/rho) gives a martingale; the two-sided
    # boundary is the |s| where it equals 1/alpha. Integrate the mixture numerically, not from the closed form.
    rho, alpha = 50.0, 0.05
    for v in (10.0, 100.0, 1000.0):
        s = float(b.normal_mixture_boundary(v, rho, alpha))
        mix, _ = integrate.quad(lambda lam, s=s, v=v: math.exp(lam * s - lam * lam * v / 2)
                                * sps.norm.pdf(lam, scale=1 / math.sqrt(rho)), -5, 5, limit=200)
        assert mix == pytest.approx(1 / alpha, rel=1e-6)


def test_halfwidth_is_waudby_smith_standardised_margin_times_sigma():
    # Waudby-Smith et al. (2024), Thm 2.2: sigma * sqrt(2 (t rho2 + 1) / (t^2 rho2) * log(sqrt(t rho2 + 1) / alpha))
    alpha, t_opt, sigma = 0.01, 500, 3.0
    rho2 = (2 * math.log(1 / alpha) + math.log(1 + 2 * math.log(1 / alpha))) / t_opt
    for t in (10, 100, 500, 5000):
        published = sigma * math.sqrt(2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha))
        ours = float(b.normal_mixture_halfwidth(sigma / math.sqrt(t), t, alpha, t_opt))
        assert ours == pytest.approx(published, rel=1e-12)
    assert float(b.normal_mixture_halfwidth(1.0, 0, alpha, t_opt)) == math.inf


def test_tuned_rho2_is_near_the_exact_optimum_at_t_opt():
    alpha, t_opt = 0.05 / 6, 2000

    def width(rho2: float) -> float:
        return math.sqrt(2 * (t_opt * rho2 + 1) / (t_opt**2 * rho2) * math.log(math.sqrt(t_opt * rho2 + 1) / alpha))

    best = optimize.minimize_scalar(width, bounds=(1e-8, 1.0), method="bounded").fun
    assert width(b.tuned_rho2(t_opt, alpha)) <= best * 1.01
    with pytest.raises(ValueError, match="alpha"):
        b.tuned_rho2(100, 1.5)


def test_beta_binomial_mixture_matches_numerical_integral():
    a, bb = 2.0, 3.0
    for s, t, m in ((0, 10, 0.1), (7, 20, 0.3), (45.5, 50, 0.8)):
        integrand = lambda th, s=s, t=t, m=m: ((th / m) ** s * ((1 - th) / (1 - m)) ** (t - s)  # noqa: E731
                                               * sps.beta.pdf(th, a, bb))
        value, _ = integrate.quad(integrand, 0, 1, limit=200)
        assert float(b.beta_binomial_log_mixture(s, t, m, a, bb)) == pytest.approx(math.log(value), rel=1e-7)


def test_proportion_cs_ends_are_where_the_mixture_crosses():
    alpha = 0.01
    low, high = b.proportion_cs(np.array([3.0, 0.0]), np.array([100.0, 400.0]), alpha)
    level = math.log(1 / alpha)
    assert float(b.beta_binomial_log_mixture(3, 100, low[0], 0.5, 0.5)) == pytest.approx(level, abs=1e-6)
    assert float(b.beta_binomial_log_mixture(3, 100, high[0], 0.5, 0.5)) == pytest.approx(level, abs=1e-6)
    assert low[1] == 0.0 and 0 < high[1] < 0.03  # no errors in 400: the rate is below ~3 %, and may be 0
    low, high = b.proportion_cs(0.0, 0.0, alpha)
    assert (float(low), float(high)) == (0.0, 1.0)


def _ever_misses(low: np.ndarray, high: np.ndarray, truth: float) -> float:
    return float(((low > truth) | (high < truth)).any(axis=1).mean())


def test_proportion_cs_covers_at_every_look_bernoulli_and_bounded():
    rng = np.random.default_rng(1)
    sims, n, alpha = 500, 3000, 0.05
    looks = np.arange(30, n + 1, 30)
    bern = np.cumsum(rng.random((sims, n)) < 0.1, axis=1)[:, looks - 1]
    beta = np.cumsum(rng.beta(2, 5, (sims, n)), axis=1)[:, looks - 1]  # any [0, 1] data is sub-Bernoulli
    for sums, truth in ((bern, 0.1), (beta, 2 / 7)):
        low, high = b.proportion_cs(sums, np.broadcast_to(looks, sums.shape), alpha)
        miss = _ever_misses(low, high, truth)
        assert miss <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)


def test_quantile_cs_covers_the_p99_at_every_look():
    rng = np.random.default_rng(2)
    sims, n, alpha, p = 300, 4000, 0.05, 0.99
    x = rng.lognormal(0, 0.5, (sims, n))
    truth = math.exp(0.5 * sps.norm.ppf(p))
    missed = np.zeros(sims, dtype=bool)
    for t in range(100, n + 1, 100):
        lo, hi = b.quantile_cs_ranks(t, p, alpha, 2000.0)
        part = np.partition(x[:, :t], sorted({max(lo, 1) - 1, min(hi, t) - 1}), axis=1)
        low = part[:, lo - 1] if lo >= 1 else np.full(sims, -np.inf)
        high = part[:, hi - 1] if hi <= t else np.full(sims, np.inf)
        missed |= (low > truth) | (high < truth)
    assert missed.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)


def test_quantile_ranks_bracket_the_sample_quantile_and_shrink():
    ranks = [b.quantile_cs_ranks(n, 0.99, 0.05 / 12, 2000.0) for n in (100, 1000, 5000, 20000)]
    assert ranks[0] == (ranks[0][0], 101)  # 100 samples: no upper bound for a p99 yet
    for n, (lo, hi) in zip((100, 1000, 5000, 20000), ranks, strict=True):
        assert lo <= stats._order_stat_rank(n, 0.99) <= hi
    widths = [(hi - lo) / n for n, (lo, hi) in zip((1000, 5000, 20000), ranks[1:], strict=True)]
    assert widths == sorted(widths, reverse=True)
