"""Time-uniform boundaries: the building blocks of the judge's confidence sequences (CS).

A confidence sequence ``(C_t)`` covers its target at every ``t`` at once: ``P(for all t: theta in C_t) >=
1 - alpha``. So it can be read after every request, stopped at any time, and stays valid. Each boundary
below is the crossing level of a nonnegative (super)martingale, and Ville's inequality
(``P(sup_t M_t >= 1/alpha) <= alpha``) gives the guarantee.

* ``normal_mixture_halfwidth``: the two-sided normal-mixture boundary of Howard, Ramdas, McAuliffe and
  Sekhon (2021), "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2),
  eq. (14)/Prop. 6: ``|S_t| < sqrt((V_t + rho) log((V_t + rho) / (rho alpha^2)))``, crossed with
  probability <= alpha by a sum ``S_t`` that is sub-Gaussian with variance process ``V_t``. Used with a
  plug-in variance, this is the Gaussian-mixture *asymptotic* CS of Waudby-Smith, Arbour, Sinha, Kennedy and
  Ramdas (2024), "Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist.
  52(6), Thm 2.2 -- in their standardised form ``sigma_hat * sqrt(2 (t rho2 + 1) / (t^2 rho2) *
  log(sqrt(t rho2 + 1) / alpha))`` -- and the mixture SPRT of Johari, Koomen, Pekelis and Walsh (2022),
  "Always valid inference", Oper. Res. 70(3). ``rho2`` is tuned to be tightest at a chosen sample size with
  Waudby-Smith et al.'s approximation ``rho2 = (2 log(1/alpha) + log(1 + 2 log(1/alpha))) / t_opt``.
* ``beta_binomial_log_mixture``: the beta-binomial conjugate mixture of Howard et al. (2021, Sec. 3.2 and
  Prop. 7; Robbins 1970): ``M_t(m) = B(a + S_t, b + t - S_t) / B(a, b) / (m^S_t (1 - m)^(t - S_t))``, the
  Bernoulli likelihood ratio mixed over ``theta ~ Beta(a, b)``. It is a martingale when the observations are
  Bernoulli(m), and a supermartingale for any observations in [0, 1] with mean m (they are sub-Bernoulli,
  since ``x -> u^x v^(1-x)`` is convex). Exact at every ``t``: no asymptotics.
* ``proportion_cs``: ``{m : M_t(m) < 1/alpha}`` for a fixed prior, an interval because ``log M_t`` is
  convex in ``m``; found by bisection, vectorised.
* ``quantile_cs_ranks``: the sequential quantile CS of Howard and Ramdas (2022), "Sequential estimation
  of quantiles with applications to A/B-testing and best-arm identification", Bernoulli 28(3), Thm 1: at
  the true ``p``-quantile ``q`` the indicators ``1{X_i <= q}`` are Bernoulli(p), so any Bernoulli boundary
  (here the beta-binomial mixture, centred at ``p``) turns into order statistics ``X_(lo) <= q <= X_(hi)``
  valid at every ``t``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import betaln


def tuned_rho2(t_opt: float, alpha: float) -> float:
    """Waudby-Smith et al.'s (2024) ``rho^2`` making the standardised normal-mixture CS tightest near ``t_opt``."""
    if t_opt <= 0 or not 0 < alpha < 1:
        raise ValueError(f"t_opt must be > 0 and alpha in (0, 1), got t_opt={t_opt}, alpha={alpha}")
    log_inv = math.log(1 / alpha)
    return (2 * log_inv + math.log(1 + 2 * log_inv)) / t_opt


def normal_mixture_boundary(v: np.ndarray | float, rho: float, alpha: float) -> np.ndarray:
    """Howard et al. (2021) two-sided normal-mixture boundary ``u(v)`` for ``|S_t|`` at intrinsic time ``v``."""
    v = np.asarray(v, dtype=np.float64)
    return np.sqrt((v + rho) * np.log((v + rho) / (rho * alpha * alpha)))


def normal_mixture_halfwidth(se: np.ndarray, t: np.ndarray, alpha: float, t_opt: float) -> np.ndarray:
    """Half-width of the asymptotic CS for a mean (or a difference of means) after ``t`` observations.

    ``se`` is the plug-in standard error of the estimate (``sigma_hat / sqrt(t)``); ``t`` the (effective)
    number of observations. Equals ``se * sqrt(t) * std_margin(t)`` with Waudby-Smith et al.'s standardised
    margin, i.e. the normal-mixture boundary in units of ``sigma_hat`` divided by ``t``. Zero or negative
    ``t`` gives ``inf``.
    """
    t = np.asarray(t, dtype=np.float64)
    rho2 = tuned_rho2(t_opt, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        trho = t * rho2
        mult = np.sqrt((trho + 1) / trho * np.log((trho + 1) / (alpha * alpha)))
        out = np.asarray(se, dtype=np.float64) * mult
    return np.where(t > 0, out, np.inf)


def beta_binomial_log_mixture(s: np.ndarray, t: np.ndarray, m: np.ndarray, a: float, b: float) -> np.ndarray:
    """``log M_t(m)``: the beta-binomial mixture of Bernoulli(m) likelihood ratios (Howard et al. 2021).

    ``s`` is the sum of ``t`` observations in [0, 1] (a count for Bernoulli data); ``m`` in (0, 1) the
    hypothesised mean; ``Beta(a, b)`` the mixing prior.
    """
    s, t, m = (np.asarray(x, dtype=np.float64) for x in (s, t, m))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lik = np.where(s > 0, s * np.log(m), 0.0) + np.where(t - s > 0, (t - s) * np.log1p(-m), 0.0)
    return betaln(a + s, b + t - s) - betaln(a, b) - log_lik


def proportion_cs(s: np.ndarray, t: np.ndarray, alpha: float, a: float = 0.5, b: float = 0.5,
                  iters: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """The beta-binomial CS ``{m : M_t(m) < 1/alpha}`` for the mean of [0, 1] observations, vectorised.

    Returns ``(low, high)``; with ``t == 0`` the whole of [0, 1]. ``log M_t`` is convex in ``m`` with its
    minimum (<= 0) at ``s / t``, so each end is found by bisection on its side.
    """
    s, t = np.broadcast_arrays(np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64))
    level = math.log(1 / alpha)
    centre = np.where(t > 0, s / np.maximum(t, 1), 0.5)

    def crossing(inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
        # bisection between a point inside the CS and the end of [0, 1] it moves towards
        for _ in range(iters):
            mid = (inside + outside) / 2
            out = beta_binomial_log_mixture(s, t, np.clip(mid, 1e-300, 1 - 1e-16), a, b) >= level
            inside, outside = np.where(out, inside, mid), np.where(out, mid, outside)
        return inside

    low = crossing(centre.copy(), np.zeros_like(centre))
    high = crossing(centre.copy(), np.ones_like(centre))
    # the ends themselves may lie inside (e.g. m -> 0 when s == 0): keep them then
    low = np.where(beta_binomial_log_mixture(s, t, np.full_like(s, 1e-300), a, b) < level, 0.0, low)
    high = np.where(beta_binomial_log_mixture(s, t, np.full_like(s, 1 - 1e-16), a, b) < level, 1.0, high)
    empty = t <= 0
    return np.where(empty, 0.0, low), np.where(empty, 1.0, high)


def quantile_prior(p: float, alpha: float, t_opt: float) -> tuple[float, float]:
    """A ``Beta(r p, r (1 - p))`` prior for the quantile CS, concentrated to be tightest near ``t_opt``.

    Matching the prior's variance ``p (1 - p) / (r + 1)`` to the variance of the optimal normal mixture of
    Howard et al. (2021) at intrinsic time ``t_opt p (1 - p)`` (mixing precision ``rho = t_opt p (1 - p) /
    (2 log(1/alpha) + log(1 + 2 log(1/alpha)))`` on the tilt ``lambda ~ (theta - p) / (p (1 - p))``) gives
    ``r + 1 = t_opt / (2 log(1/alpha) + log(1 + 2 log(1/alpha))) = 1 / tuned_rho2(t_opt, alpha)``.
    """
    r = max(1.0, 1.0 / tuned_rho2(t_opt, alpha) - 1.0)
    return r * p, r * (1 - p)


@functools.lru_cache(maxsize=4096)
def quantile_cs_ranks(n: int, p: float, alpha: float, t_opt: float) -> tuple[int, int]:
    """1-based order-statistic ranks ``(lo, hi)`` with ``X_(lo) <= Q(p) <= X_(hi)`` in a CS at level ``alpha``.

    ``lo == 0`` means no lower bound yet (-inf); ``hi == n + 1`` no upper bound yet (+inf). The counts
    ``s = #{X_i <= Q(p)}`` kept are those with ``M_n(p) < 1/alpha``; ``log M_n`` is convex in ``s`` (log-Beta
    is convex), so they form an interval ``[s_lo, s_hi]``, and ``Q(p)`` lies in ``[X_(s_lo), X_(s_hi + 1)]``.
    """
    if n <= 0:
        return 0, n + 1
    a, b = quantile_prior(p, alpha, t_opt)
    s = np.arange(n + 1, dtype=np.float64)
    kept = np.flatnonzero(beta_binomial_log_mixture(s, np.float64(n), np.float64(p), a, b) < math.log(1 / alpha))
    s_lo, s_hi = int(kept[0]), int(kept[-1])
    return s_lo, s_hi + 1
