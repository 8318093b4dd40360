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
"""

from __future__ import annotations

import math

import numpy as np


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
