"""Per-metric confidence sequences for ``treatment - control`` and the verdicts read from them.

Every function is vectorised (any array shape), so the judge (scalars) and the simulation (sims x looks)
run the same code. Each metric's CS is at level ``alpha_m`` (the judge's Bonferroni share):

* error rate: one exact beta-binomial CS per arm at ``alpha_m / 2`` (``boundaries.proportion_cs``, no
  asymptotics: right even with zero errors), the difference is ``[lo_t - hi_c, hi_t - lo_c]``;
* mean latency, accuracy, mean confidence and each label's share: the asymptotic normal-mixture CS of the
  difference of two independent means (Waudby-Smith et al. 2024; Johari et al. 2022), plug-in standard
  error ``sqrt(var_c / n_c + var_t / n_t)`` at the effective size ``2 n_c n_t / (n_c + n_t)``;
* p99 latency: one sequential quantile CS per arm at ``alpha_m / 2`` (Howard and Ramdas 2022), then the
  difference as for the error rate.
"""

from __future__ import annotations

import numpy as np

from experiments.judge import boundaries

NOT_ENOUGH, BETTER, WORSE, DIFFERENT, EQUIVALENT, UNDECIDED = range(6)
"""Verdict codes (arrays of them in the simulation); ``VERDICTS`` names them."""

VERDICTS = ("not enough evidence yet", "better", "worse", "different", "equivalent within margin", "no decision yet")
"""The verdict for each code, as reports print it."""

FALSE_IN_AA = (BETTER, WORSE, DIFFERENT)
"""The verdicts that are false when both arms are the same (A/A)."""


def _arrays(*xs):
    return [np.asarray(x, dtype=np.float64) for x in xs]


def mean_diff_cs(n_c, sum_c, sumsq_c, n_t, sum_t, sumsq_t, alpha: float, t_opt: float,
                 bernoulli: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, low, high)`` of ``mean_t - mean_c`` from counts, sums and sums of squares.

    ``bernoulli``: the observations are 0/1 and the variance is taken as ``p~ (1 - p~)`` with ``p~ =
    (s + 1/2) / (n + 1)``, so a run of all-0 or all-1 outcomes does not give a zero-width interval.
    """
    n_c, sum_c, sumsq_c, n_t, sum_t, sumsq_t = _arrays(n_c, sum_c, sumsq_c, n_t, sum_t, sumsq_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_c, mean_t = sum_c / n_c, sum_t / n_t
        if bernoulli:
            pc, pt = (sum_c + 0.5) / (n_c + 1), (sum_t + 0.5) / (n_t + 1)
            var_c, var_t = pc * (1 - pc), pt * (1 - pt)
        else:
            var_c = np.maximum(sumsq_c - n_c * mean_c**2, 0.0) / (n_c - 1)
            var_t = np.maximum(sumsq_t - n_t * mean_t**2, 0.0) / (n_t - 1)
        se = np.sqrt(var_c / n_c + var_t / n_t)
        t_eff = 2 * n_c * n_t / (n_c + n_t)
        half = boundaries.normal_mixture_halfwidth(se, t_eff, alpha, t_opt)
    ok = (n_c >= 2) & (n_t >= 2)
    est = np.where(ok, mean_t - mean_c, np.nan)
    half = np.where(ok, half, np.inf)
    return est, est - half, est + half


def proportion_diff_cs(k_c, n_c, k_t, n_t, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, low, high)`` of ``p_t - p_c``: exact per-arm beta-binomial CSs at ``alpha / 2`` each."""
    k_c, n_c, k_t, n_t = _arrays(k_c, n_c, k_t, n_t)
    lo_c, hi_c = boundaries.proportion_cs(k_c, n_c, alpha / 2)
    lo_t, hi_t = boundaries.proportion_cs(k_t, n_t, alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where((n_c > 0) & (n_t > 0), k_t / n_t - k_c / n_c, np.nan)
    return est, lo_t - hi_c, hi_t - lo_c


def quantile_bounds(sorted_x: np.ndarray, p: float, alpha: float, t_opt: float) -> tuple[float, float]:
    """One arm's quantile CS ``(low, high)`` at level ``alpha`` from its sorted latencies (+-inf: no bound yet)."""
    n = len(sorted_x)
    lo, hi = boundaries.quantile_cs_ranks(n, float(p), float(alpha), float(t_opt))
    return (float(sorted_x[lo - 1]) if lo >= 1 else -np.inf), (float(sorted_x[hi - 1]) if hi <= n else np.inf)


def quantile_diff_cs(lat_c: np.ndarray, lat_t: np.ndarray, p: float, alpha: float,
                     t_opt: float) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of ``Q_t(p) - Q_c(p)``: per-arm quantile CSs at ``alpha / 2`` each."""
    c, t = np.sort(np.asarray(lat_c, dtype=np.float64)), np.sort(np.asarray(lat_t, dtype=np.float64))
    if len(c) == 0 or len(t) == 0:
        return np.nan, -np.inf, np.inf
    lo_c, hi_c = quantile_bounds(c, p, alpha / 2, t_opt)
    lo_t, hi_t = quantile_bounds(t, p, alpha / 2, t_opt)
    est = float(np.quantile(t, p, method="inverted_cdf") - np.quantile(c, p, method="inverted_cdf"))
    return est, lo_t - hi_c, hi_t - lo_c


def verdict_codes(low, high, margin: float, enough, higher_is_better: bool | None) -> np.ndarray:
    """The verdict code per interval: not enough -> better/worse/different -> equivalent -> undecided.

    A CS of ``treatment - control`` above 0 is "better" when higher is better ("worse" otherwise), below 0
    the reverse, and "different" for a metric without direction; inside ``[-margin, margin]`` it is
    "equivalent within margin"; otherwise "no decision yet".
    """
    low, high = _arrays(low, high)
    above, below = low > 0, high < 0
    if higher_is_better is None:
        decided = np.where(above | below, DIFFERENT, UNDECIDED)
    else:
        up, down = (BETTER, WORSE) if higher_is_better else (WORSE, BETTER)
        decided = np.where(above, up, np.where(below, down, UNDECIDED))
    equivalent = (low >= -margin) & (high <= margin)
    decided = np.where((decided == UNDECIDED) & equivalent, EQUIVALENT, decided)
    return np.where(np.asarray(enough, dtype=bool), decided, NOT_ENOUGH).astype(np.int8)


def label_share_codes(counts_c: np.ndarray, n_c, counts_t: np.ndarray, n_t, alpha: float, t_opt: float,
                      margin: float, enough) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The label-distribution verdict from per-label counts (last axis: labels).

    Each label's share difference gets a CS at ``alpha / k`` (``k`` = labels, or 1 with two labels, whose
    shares move together): "different" if any excludes 0, "equivalent within margin" if all lie within
    +-margin. Returns ``(codes, estimate, low, high)``, the last three per label.
    """
    counts_c, counts_t = _arrays(counts_c, counts_t)
    k = counts_c.shape[-1]
    tests = 1 if k == 2 else k
    n_c, n_t = (np.asarray(x, dtype=np.float64)[..., None] for x in (n_c, n_t))
    est, low, high = mean_diff_cs(n_c, counts_c, counts_c, n_t, counts_t, counts_t, alpha / tests, t_opt,
                                  bernoulli=True)
    different = ((low > 0) | (high < 0)).any(axis=-1)
    equivalent = ((low >= -margin) & (high <= margin)).all(axis=-1)
    codes = np.where(different, DIFFERENT, np.where(equivalent, EQUIVALENT, UNDECIDED))
    return np.where(np.asarray(enough, dtype=bool), codes, NOT_ENOUGH).astype(np.int8), est, low, high
