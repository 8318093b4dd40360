"""A ratio metric compared within periods, combined over periods, with a variance over units.

Every per-request metric is a ratio of sums over units: mean latency = latency sum / answers, error rate
= server errors / requests, accuracy = correct / feedback, a label's share = its count / predictions, mean
confidence, and the tail share (answers slower than the tail threshold / answers). In arm ``a`` and period
``p`` the estimate is ``R_ap = Y_ap / N_ap`` (sums over the rows of that arm and period). The arms are
compared within each period and the periods combined with fixed-by-count weights (never pooled):

    D = sum_p w_p (R_tp - R_cp) / W,   w_p = N_cp N_tp / (N_cp + N_tp),   W = sum_p w_p

so traffic that changes over a ramp (load, the mix of texts) moves both arms of a period alike and cancels.

Variance: the delta method over units (Deng, Knoblich and Lu, "Applying the Delta Method in Metric
Analytics: A Practical Guide with Novel Ideas", KDD 2018). Linearising ``D`` gives each row the influence
``k_g (y - R_g n)`` with ``k = +-w_p / (W N_g)`` (+ treatment, - control); a unit's influence is the sum
over all its rows -- every period, and both arms when the unit moved between them (a ramp, a fallback) --
and only units are independent, so ``Var(D) = sum_units phi_u^2``: the cluster-robust (sandwich) variance
with units as clusters. Each row's influence is divided by ``1 - n / N_g`` (its leverage), the jackknife
(CR3) form that keeps a few very active units from making the variance too small (Bell and McCaffrey 2002,
"Bias reduction in standard errors for linear regression with multi-stage samples"; MacKinnon, Nielsen and
Webb 2023, "Cluster-robust inference: A guide to empirical practice", J. Econometrics 232(2)).

The variance is floored at the one requests would have if each were independent (``var_iid``; for 0/1
outcomes with ``p~ = (Y + 1/2) / (N + 1)``, so a run of zero errors never gives a zero-width interval);
their ratio is the design effect, and the CS's intrinsic time is the effective sample size ``2 W / deff``
(``2 W`` is the per-arm size of two independent samples: ``n`` for two arms of ``n``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.judge import boundaries


@dataclass(frozen=True)
class Contrast:
    """``treatment - control`` of one ratio metric in ``B`` experiments (every field ``(B,)``)."""

    estimate: np.ndarray
    """``D`` (NaN when no period has both arms)."""
    var: np.ndarray
    """Its variance: over units, floored at ``var_iid``."""
    var_iid: np.ndarray
    """The variance were every request independent."""
    weight: np.ndarray
    """``W``: the sum of the periods' weights (0: nothing to compare)."""
    n_control: np.ndarray
    """The denominator's total in the control (all periods)."""
    n_treatment: np.ndarray

    @property
    def design_effect(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.var / self.var_iid

    def interval(self, alpha: float, t_opt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(estimate, low, high)``: the asymptotic CS at level ``alpha`` (Waudby-Smith et al. 2024; the
        normal mixture of ``boundaries.normal_mixture_halfwidth``) at the effective sample size."""
        ok = (self.weight > 0) & np.isfinite(self.estimate) & (self.var > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_eff = np.where(ok, 2 * self.weight * self.var_iid / self.var, 0.0)
            half = boundaries.normal_mixture_halfwidth(np.sqrt(self.var), t_eff, alpha, t_opt)
        half = np.where(ok, half, np.inf)
        est = np.where(ok, self.estimate, np.nan)
        return est, est - half, est + half


@dataclass(frozen=True)
class Layout:
    """Where ``B`` experiments' rows sit, computed once per ``Frame`` and shared by every metric."""

    batch: int
    n_arms: int
    n_periods: int
    group: np.ndarray
    """Flat ``(B * R,)`` index of each row's (experiment, arm * P + period) in ``B * n_arms * P``."""
    unit: np.ndarray | None
    """Flat ``(B * R,)`` index of each row's (experiment, unit) in ``B * n_units``; None: every request is a
    unit of its own."""
    n_units: int

    @classmethod
    def of(cls, group: np.ndarray, unit: np.ndarray | None, n_units: int, n_arms: int, n_periods: int) -> Layout:
        B = group.shape[0]
        rows_b = np.arange(B)[:, None]
        flat_unit = None if unit is None else (np.broadcast_to(unit, group.shape) + n_units * rows_b).ravel()
        return cls(B, n_arms, n_periods, (group + n_arms * n_periods * rows_b).ravel(), flat_unit, n_units)

    @property
    def n_groups(self) -> int:
        return self.n_arms * self.n_periods

    def group_sums(self, x: np.ndarray) -> np.ndarray:
        """``(B, G)`` sums of the rows' ``x`` per (arm, period)."""
        G = self.n_groups
        return np.bincount(self.group, weights=x.ravel(), minlength=self.batch * G).reshape(self.batch, G)


def contrast(y: np.ndarray, n: np.ndarray, q: np.ndarray | None, layout: Layout, treatment: int) -> Contrast:
    """Arm ``treatment`` against arm 0 for the ratio ``sum y / sum n`` (rows ``(B, R)``, see ``Frame``).

    ``q``: per row, the sum of the squares of its requests' values (``None``: the values are 0/1, so the
    binomial variance with ``p~`` is used for ``var_iid``). ``layout.unit=None``: every request is a unit of
    its own, and the variance is ``var_iid``.
    """
    B, P, G = layout.batch, layout.n_periods, layout.n_groups
    Y, N = layout.group_sums(y), layout.group_sums(n)
    c, t = slice(0, P), slice(treatment * P, (treatment + 1) * P)
    with np.errstate(divide="ignore", invalid="ignore"):
        R = np.where(N > 0, Y / N, 0.0)
        both = (N[:, c] > 0) & (N[:, t] > 0)
        w = np.where(both, N[:, c] * N[:, t] / (N[:, c] + N[:, t]), 0.0)
        W = w.sum(axis=1)
        est = (w * (R[:, t] - R[:, c])).sum(axis=1) / W
        k = np.zeros((B, G))
        k[:, t] = np.where(both, w / N[:, t], 0.0) / W[:, None]
        k[:, c] = -np.where(both, w / N[:, c], 0.0) / W[:, None]
        if q is None:
            p = (Y + 0.5) / (N + 1)
            per_request = p * (1 - p) * N
        else:
            per_request = np.maximum(layout.group_sums(q) - R * Y, 0.0)
    k = np.where(np.isfinite(k), k, 0.0)
    var_iid = (k * k * per_request).sum(axis=1)
    if layout.unit is None:
        var = var_iid
    else:
        kg, Rg, Ng = k.ravel()[layout.group], R.ravel()[layout.group], N.ravel()[layout.group]
        nv = n.ravel()
        leverage = nv / np.where(Ng > 0, Ng, 1.0)
        psi = kg * (y.ravel() - Rg * nv) / np.maximum(1.0 - leverage, 1e-3)
        phi = np.bincount(layout.unit, weights=psi, minlength=B * layout.n_units)
        var = np.maximum((phi * phi).reshape(B, layout.n_units).sum(axis=1), var_iid)
    return Contrast(est, var, var_iid, W, N[:, c].sum(axis=1), N[:, t].sum(axis=1))
