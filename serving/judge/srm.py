"""Sample-ratio mismatch: does the observed split of units, and of requests, match the configured weights?

A split that does not match the weights (a bug in assignment, an arm that loses requests before they are
recorded, a client that retries on one arm) makes every other verdict untrustworthy, so it is a verdict of
its own, reported first. Two tests, each valid at every look and across weight changes:

* **Units** (``units_log_evalue``). Each unit is counted once, in the period and assigned arm where it is
  first seen: a new unit's bucket is uniform, so its arm is a draw from that period's weights (a returning
  unit's arm follows from its bucket and is no new evidence); each unkeyed request is a draw of its own.
  Per period, the counts' Dirichlet-multinomial mixture of likelihood ratios against the configured shares
  ``theta`` is a test martingale (Lindon and Malek 2022, "Anytime-valid inference for multinomial count
  data", NeurIPS; the conjugate mixture of Robbins 1970): ``B(c theta + x) / B(c theta) / prod theta^x``
  with ``B`` the multivariate Beta function. A product of test martingales each started at its period's
  beginning is a test martingale, so the periods' e-values multiply, and Ville's inequality bounds the
  chance that the product ever reaches ``1/alpha`` by ``alpha``.
* **Requests** (``request_shift``). Requests are clustered in units, so their split is tested as a ratio
  over units: per treatment arm, ``sum_p (N_ap - theta_ap R_p) / R`` (requests in the arm minus its
  configured share of the period's requests, over all periods), mean 0 under the weights whatever the units'
  activity, with the variance over units (each unit's terms summed over its periods) and the asymptotic CS
  of ``ratio.Contrast``.

The prior's concentration ``c`` is matched, as ``boundaries.quantile_prior`` does, to the normal mixture
tightest at ``tune_n`` units: ``c + 1 = 1 / boundaries.tuned_rho2(tune_n, alpha)``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from serving.judge import boundaries
from serving.judge.ratio import Contrast


def concentration(t_opt: float, alpha: float) -> float:
    """The Dirichlet prior's concentration ``c`` (prior ``Dirichlet(c theta)``)."""
    return max(1.0, 1.0 / boundaries.tuned_rho2(t_opt, alpha) - 1.0)


def units_log_evalue(counts: np.ndarray, shares: np.ndarray, c: float) -> np.ndarray:
    """``log`` of the product over periods of the Dirichlet-multinomial e-values.

    ``counts``: ``(..., P, A)`` new units per period and arm; ``shares``: ``(P, A)`` configured shares. An
    arm with share 0 that has units gives ``+inf``; arms with share 0 and no units take no part.
    """
    x = np.asarray(counts, dtype=np.float64)
    theta = np.broadcast_to(np.asarray(shares, dtype=np.float64), x.shape)
    live = theta > 0
    a = np.where(live, c * theta, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_theta = np.where(live, np.log(np.where(live, theta, 1.0)), 0.0)
        per_arm = np.where(live, gammaln(a + x) - gammaln(a) - x * log_theta, 0.0)
        per_period = gammaln(c) - gammaln(c + x.sum(axis=-1)) + per_arm.sum(axis=-1)
        impossible = ((~live) & (x > 0)).any(axis=-1)
    return np.where(impossible, np.inf, per_period).sum(axis=-1)


def request_shift(requests: np.ndarray, assigned: np.ndarray, unit: np.ndarray | None, n_units: int,
                  shares: np.ndarray, arm: int) -> Contrast:
    """Arm ``arm``'s share of requests minus its configured share, combined over periods (``Contrast``;
    ``n_control``: all requests, ``n_treatment``: the arm's).

    ``requests``, ``assigned`` (assigned arm * P + period index): ``(B, R)``; ``unit`` as in ``Frame``.
    """
    P, A = shares.shape
    B = requests.shape[0]
    rows_b = np.arange(B)[:, None]
    flat = (assigned + A * P * rows_b).ravel()
    N = np.bincount(flat, weights=requests.ravel(), minlength=B * A * P).reshape(B, A, P)
    R_p = N.sum(axis=1)  # (B, P)
    total = R_p.sum(axis=1)
    theta = shares[:, arm]  # (P,)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = (N[:, arm] - theta * R_p).sum(axis=1) / total
        var_iid = (R_p * theta * (1 - theta)).sum(axis=1) / total**2
        if unit is None:
            var = var_iid
        else:
            in_arm = (assigned // P) == arm
            psi = (in_arm - theta[assigned % P]) * requests / total[:, None]
            uflat = np.broadcast_to(unit, assigned.shape) + n_units * rows_b
            phi = np.bincount(uflat.ravel(), weights=psi.ravel(), minlength=B * n_units)
            var = np.maximum((phi * phi).reshape(B, n_units).sum(axis=1), var_iid)
    # the CS's effective time is in requests: half of them stands in for "per arm" in Contrast.interval
    return Contrast(est, var, var_iid, total / 2, total, N[:, arm].sum(axis=1))
