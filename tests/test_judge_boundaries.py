"""The judge's normal-mixture boundary against a numerical integral and the published formula."""

from __future__ import annotations

import math

import pytest
from scipy import integrate, optimize
from scipy import stats as sps

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
