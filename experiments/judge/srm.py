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
  over units: per treatment arm, ``D = sum_p (N_ap - theta_ap R_p) / R`` (requests in the arm minus its
  configured share of the period's requests, over all periods), mean 0 under the weights whatever the units'
  activity, with the asymptotic CS of ``ratio.Contrast``. Its variance is the larger of two: the plug-in
  variance over units (each unit's terms summed over its periods), and the variance the design gives ``D``
  given the units' activity. The router's assignment (``serving/router/assignment.py``) gives a treatment
  the nested intervals ``[start, start + theta_p)`` of a uniform bucket, so a keyed unit is in the arm in
  periods ``p`` and ``q`` together with probability ``min(theta_p, theta_q)``: its terms have covariance
  ``r_p r_q (min(theta_p, theta_q) - theta_p theta_q)``; unkeyed requests are independent draws
  (``theta (1 - theta)`` each). The plug-in alone is too small when a very active unit happens to sit in an
  arm with a small share (the statistic is skewed); the design variance alone too small when it sits in it.
  The test assumes the treatment does not change how many requests a unit sends.

The prior's concentration ``c`` makes the units' test most sensitive near ``tune_n`` units: matching the
prior's variance ``theta (1 - theta) / (c + 1)`` to that of the normal mixture tightest at ``tune_n``
(``boundaries.tuned_rho2``) gives ``c + 1 = 1 / tuned_rho2(tune_n, alpha)`` (about 140 at the defaults).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

from experiments.judge import boundaries
from experiments.judge.ratio import Contrast


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


def _design_var(requests: np.ndarray, assigned: np.ndarray, unit: np.ndarray, keyed: np.ndarray, n_units: int,
                theta: np.ndarray) -> np.ndarray:
    """``(B,)``: ``sum_units r' C r`` (keyed units) + ``sum_rows r theta (1 - theta)`` (unkeyed rows)."""
    B, P = requests.shape[0], len(theta)
    rows_b = np.arange(B)[:, None]
    keyed = np.broadcast_to(keyed, requests.shape)
    period = assigned % P
    flat = ((np.broadcast_to(unit, requests.shape) + n_units * rows_b) * P + period)[keyed]
    r = np.bincount(flat, weights=requests[keyed], minlength=B * n_units * P).reshape(B, n_units, P)
    cov = np.minimum.outer(theta, theta) - np.outer(theta, theta)
    clustered = np.einsum("bup,pq,buq->b", r, cov, r)
    free = np.where(keyed, 0.0, requests * (theta * (1 - theta))[period]).sum(axis=1)
    return clustered + free


def request_shift(requests: np.ndarray, assigned: np.ndarray, unit: np.ndarray | None, keyed: np.ndarray,
                  n_units: int, shares: np.ndarray, arm: int) -> Contrast:
    """Arm ``arm``'s share of requests minus its configured share, combined over periods (``Contrast``;
    ``n_control``: all requests, ``n_treatment``: the arm's).

    ``requests``, ``assigned`` (assigned arm * P + period index): ``(B, R)``; ``unit``, ``keyed`` as in
    ``Frame``.
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
            design = _design_var(requests, assigned, unit, keyed, n_units, theta) / total**2
            var = np.maximum(np.maximum((phi * phi).reshape(B, n_units).sum(axis=1), design), var_iid)
    # the CS's effective time is in requests: half of them stands in for "per arm" in Contrast.interval
    return Contrast(est, var, var_iid, total / 2, total, N[:, arm].sum(axis=1))
