"""What the judge reads: per (arm, period, unit) sums, the same from memory, from a store and in simulation.

The unit of analysis is the unit of assignment. The router is sticky by key (a user id): every request of
a key goes to one arm, so requests of one key are correlated and only keys are independent. A request
without a key is assigned on its own, so it is a unit of its own; to keep tables small, unkeyed requests
are summed into ``PSEUDO_UNITS`` buckets per (arm, period) by a hash of their request id. Grouping
independent units leaves the cluster-robust variance unbiased, so this costs nothing but a little noise.

A *period* is a stretch of constant weights: the store's revision in force when the request was
assigned, or ``Judge.weights_changed`` in memory. ``UnitTable.periods`` gives each period's configured
weights; the judge compares the arms within each period and combines the periods.

The p99 guardrail is the share of answers slower than a tail threshold. Every latency is counted in a
bucket of the fixed grid ``LATENCY_EDGES_MS`` (four buckets per doubling), so the threshold can be chosen
after the fact, and identically by every replica and by the store: the smallest edge at or above the
control's empirical p99 over its first ``min_samples.latency_p99`` answers (``tail_threshold_ms``).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from experiments.generation import GENERATION_FIELDS

PSEUDO_UNITS = 1024
"""Buckets per (arm, period) that unkeyed requests are summed into."""
PSEUDO_PREFIX = "~"
"""Unit ids of those buckets start with this (a key hash is 16 hex digits, so it never does)."""

LATENCY_EDGES_MS = tuple(round(0.1 * 2 ** (k / 4), 6) for k in range(81))
"""The latency grid: 0.1 ms to 104.9 s (0.1 ms x 2^20), four edges per doubling (each ~19 % above the last)."""


def latency_bucket(latency_ms: float) -> int:
    """The bucket of a latency: ``b`` with ``LATENCY_EDGES_MS[b-1] < latency_ms <= LATENCY_EDGES_MS[b]``
    (0: at most the first edge; ``len(LATENCY_EDGES_MS)``: above the last). Answers slower than edge ``e``
    are those in buckets ``> e``."""
    return bisect.bisect_left(LATENCY_EDGES_MS, latency_ms)


def latency_buckets(latency_ms: np.ndarray) -> np.ndarray:
    """``latency_bucket`` for an array (int64)."""
    return np.searchsorted(np.asarray(LATENCY_EDGES_MS), np.asarray(latency_ms, dtype=np.float64), side="left")


def unit_id(key: str | None, request_id: str) -> str:
    """The unit a request belongs to: the key's hash, or for an unkeyed request one of ``PSEUDO_UNITS``
    buckets chosen by a hash of its request id (``~0`` .. ``~1023``)."""
    if key is not None:
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=4).digest(), "big")
    return f"{PSEUDO_PREFIX}{h % PSEUDO_UNITS}"


@dataclass(frozen=True)
class UnitTable:
    """One experiment's data as the judge reads it: one row per (arm, assigned arm, period, unit).

    Every array in ``ROW_FIELDS`` (and each of ``labels``) has one entry per row. Sums are over the unit's
    requests in that arm and period. ``tail`` counts answers slower than ``tail_threshold_ms`` (None while
    the control has too few answers to set it).
    """

    arms: tuple[str, ...]
    """Arm names, the control first; ``arm`` and ``assigned`` index into it."""
    periods: Mapping[int, Mapping[str, float]]
    """Each period's configured weights (any scale; an arm missing has weight 0)."""
    arm: np.ndarray
    """The arm that served the row's requests (int index)."""
    assigned: np.ndarray
    """The arm they were assigned to (differs from ``arm`` after a fallback)."""
    period: np.ndarray
    """The period (a key of ``periods``)."""
    unit: np.ndarray
    """The unit (int): equal ints are the same unit, in any arm and period."""
    keyed: np.ndarray
    """True: a sticky key; False: a bucket of unkeyed requests."""
    requests: np.ndarray
    """Requests answered or failed on the server side (client errors are the caller's and not counted)."""
    server_errors: np.ndarray
    answered: np.ndarray
    latency_sum: np.ndarray
    """Sum of the answers' latencies in ms, each clipped at ``LATENCY_CAP_MS``."""
    latency_sq: np.ndarray
    """Sum of their squares."""
    predictions: np.ndarray
    """Predicted labels (a request may carry several inputs)."""
    confidence_n: np.ndarray
    confidence_sum: np.ndarray
    confidence_sq: np.ndarray
    feedback_n: np.ndarray
    feedback_correct: np.ndarray
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Per label, its count per row."""
    tail: np.ndarray | None = None
    """Answers slower than ``tail_threshold_ms`` per row."""
    tail_threshold_ms: float | None = None
    generation: Mapping[str, np.ndarray] = field(default_factory=dict)
    """A generative experiment's per-row sums, each of ``experiments.generation.GENERATION_FIELDS``; empty: a
    classifier's (or no stream answered yet)."""

    ROW_FIELDS = ("arm", "assigned", "period", "unit", "keyed", "requests", "server_errors", "answered",
                  "latency_sum", "latency_sq", "predictions", "confidence_n", "confidence_sum", "confidence_sq",
                  "feedback_n", "feedback_correct")

    def __post_init__(self) -> None:
        n = len(self.arm)
        bad = [f for f in self.ROW_FIELDS if len(getattr(self, f)) != n]
        bad += [f"labels[{k!r}]" for k, v in self.labels.items() if len(v) != n]
        if self.tail is not None and len(self.tail) != n:
            bad.append("tail")
        if self.generation:
            missing = sorted(set(GENERATION_FIELDS) - set(self.generation))
            bad += [f"generation[{k!r}]" for k in missing]
            bad += [f"generation[{k!r}]" for k, v in self.generation.items() if len(v) != n]
        if bad:
            raise ValueError(f"unit table: {', '.join(bad)} must have one entry per row ({n})")
        unknown = sorted(set(np.unique(self.period).tolist()) - set(self.periods))
        if unknown:
            raise ValueError(f"unit table: rows of period(s) {unknown} that have no weights in periods")

    @property
    def rows(self) -> int:
        return len(self.arm)

    @property
    def generative(self) -> bool:
        """Whether any answer in it was a generated stream: the judge then reads the generative metrics."""
        return bool(self.generation) and float(np.sum(self.generation["streams"])) > 0


LATENCY_CAP_MS = 1000.0
"""Latencies are clipped here for the mean (a finite variance, so the CLT behind its CS holds)."""


def tail_threshold_ms(first_control_latencies_ms: Sequence[float] | np.ndarray, quantile: float,
                      needed: int) -> float | None:
    """The tail threshold: the smallest grid edge at or above the ``quantile`` of the control's first
    ``needed`` answers; None while it has fewer. Depends only on those answers, so it never moves."""
    x = np.asarray(first_control_latencies_ms, dtype=np.float64)[:needed]
    if len(x) < needed:
        return None
    q = float(np.quantile(x, quantile, method="inverted_cdf"))
    b = min(latency_bucket(q), len(LATENCY_EDGES_MS) - 1)
    return LATENCY_EDGES_MS[b]


def weights_of(periods: Mapping[int, Mapping[str, float]], arms: Sequence[str]) -> dict[int, np.ndarray]:
    """Each period's weights as shares over ``arms`` (summing to 1)."""
    out = {}
    for p, w in periods.items():
        v = np.array([float(w.get(a, 0.0)) for a in arms])
        if v.sum() <= 0:
            raise ValueError(f"period {p}: weights {dict(w)} give no arm any traffic")
        out[p] = v / v.sum()
    return out
