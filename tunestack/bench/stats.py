"""A benchmark's figures: exact quantiles, the one summary schema, and the per-phase interval of a difference.

Every latency figure a bench reports is ``summarize(ms)``::

    {"n": 2000, "mean_ms": 1.91, "p50_ms": 1.83, "p90_ms": 2.2, "p99_ms": 3.4}

the quantiles exact order statistics of every sample (``quantile``: ``x_(k)``, ``k = ceil(n q)``), never
bucketed or interpolated. A difference measured side by side in alternating phases is ``compare``'s
``{"diff_p50_ms": {"vs": BASELINE, "estimate", "low", "high"}, "diff_p99_ms": ...}``: the mean of the
per-phase differences with a t interval over them (``blocked_quantile_diff_ci``), so drift between
phases widens the interval instead of being read as a difference. ``median_interval`` is a median with its
distribution-free interval (paired per-request differences).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

QUANTILES = {"p50_ms": 0.5, "p90_ms": 0.9, "p99_ms": 0.99}
"""The quantiles every summary reports, by key."""
COMPARED = {"diff_p50_ms": 0.5, "diff_p99_ms": 0.99}
"""The quantile differences ``compare`` reports, by key."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``1 - alpha`` confidence interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ms(seconds: float) -> float:
    """Seconds -> milliseconds, rounded to the microsecond (a figure for a table or a JSON file)."""
    return round(seconds * 1000, 3)


def quantile(x: np.ndarray | Sequence[float], q: float) -> float:
    """The sample ``q``-quantile as an order statistic (``x_(k)``, ``k = ceil(n q)``)."""
    return float(np.quantile(np.asarray(x, dtype=np.float64), q, method="inverted_cdf"))


def summarize(samples_ms: np.ndarray | Sequence[float]) -> dict[str, float | int | None]:
    """The one result schema: ``n``, ``mean_ms`` and the exact ``p50_ms``/``p90_ms``/``p99_ms`` of every sample
    (milliseconds; ``None`` for an empty sample)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean_ms": None, **dict.fromkeys(QUANTILES)}
    return {"n": int(x.size), "mean_ms": round(float(x.mean()), 6),
            **{key: round(quantile(x, q), 6) for key, q in QUANTILES.items()}}


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """The median of ``values`` and its distribution-free interval (order statistics: the k-th smallest and
    largest, k from the Binomial(n, 1/2) quantile; None where n is too small for one), rounded to 1e-3."""
    d = np.sort(np.asarray(values, dtype=float))
    n = len(d)
    k = int(sps.binom.ppf((1 - confidence) / 2, n, 0.5))
    if k < 1:
        return round(float(np.median(d)), 3), None, None
    return round(float(np.median(d)), 3), round(float(d[k - 1]), 3), round(float(d[n - k]), 3)


def blocked_quantile_diff_ci(control: Sequence[np.ndarray], treatment: Sequence[np.ndarray], q: float,
                             alpha: float = 0.05) -> Interval:
    """t interval for ``quantile(treatment) - quantile(control)`` measured in paired blocks: block ``k`` of
    each was taken side by side in time (a benchmark's alternating phases). One difference per block, so a
    machine whose speed drifts between blocks widens the interval instead of narrowing it falsely, as an
    interval over the pooled samples does (it treats every sample as independent)."""
    if len(control) != len(treatment) or len(control) < 2:
        raise ValueError(f"need >= 2 paired blocks, got {len(control)} and {len(treatment)}")
    d = np.array([quantile(t, q) - quantile(c, q) for c, t in zip(control, treatment, strict=True)])
    estimate = float(d.mean())
    half = float(sps.t.ppf(1 - alpha / 2, len(d) - 1)) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return Interval(estimate, estimate - half, estimate + half)


def compare(baseline: str, baseline_blocks: Sequence[np.ndarray], blocks: Sequence[np.ndarray],
            alpha: float = 0.05) -> dict[str, dict[str, float | str]]:
    """``diff_p50_ms`` and ``diff_p99_ms`` of ``blocks`` (ms, one array per phase) against ``baseline_blocks``
    taken in the same phases: estimate and ``1 - alpha`` interval, with the baseline's name."""
    out: dict[str, dict[str, float | str]] = {}
    for key, q in COMPARED.items():
        ci = blocked_quantile_diff_ci(baseline_blocks, blocks, q, alpha)
        out[key] = {"vs": baseline, "estimate": round(ci.estimate, 4), "low": round(ci.low, 4),
                    "high": round(ci.high, 4)}
    return out


def format_diff(diff: dict[str, float | str]) -> str:
    """``0.42 [0.31, 0.55]``: a ``compare`` entry as a table cell."""
    return f"{diff['estimate']} [{diff['low']}, {diff['high']}]"
