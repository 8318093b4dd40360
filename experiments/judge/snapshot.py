"""What the judge needs to know about one arm: sufficient statistics, from samples or from a store.

``ArmStats`` is a snapshot: counts, sums and sums of squares, the label counts, feedback correct/total,
and the latency sample (the p99's CS needs order statistics). A store can fill it from aggregates
(``ArmStats(...)`` directly); ``ArmAccumulator`` builds one from samples as they arrive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of a stream of numbers: enough for a mean and a variance."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray) -> Moments:
        x = np.asarray(values, dtype=np.float64)
        return cls(int(x.size), float(x.sum()), float((x * x).sum()))

    def add(self, value: float) -> Moments:
        return Moments(self.n + 1, self.total + value, self.total_sq + value * value)


@dataclass(frozen=True)
class ArmStats:
    """A snapshot of one arm, as the judge reads it. Latencies are in milliseconds."""

    requests: int = 0
    """Requests the arm received (answered + failed)."""
    server_errors: int = 0
    """Requests that failed on the server side (5xx); client errors (4xx) are not the model's fault."""
    latency_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Latencies of answered requests, for the quantile CS (order does not matter)."""
    latency_clipped: Moments | None = None
    """Moments of latencies clipped at the judge's ``latency_cap_ms``; ``None``: computed from ``latency_ms``."""
    labels: Mapping[str, int] = field(default_factory=dict)
    """Predicted-label counts."""
    confidence: Moments = field(default_factory=Moments)
    """Moments of the top-class probability per prediction."""
    feedback_correct: int = 0
    """Feedback outcomes that said the prediction was right."""
    feedback_total: int = 0
    """Feedback outcomes received."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.server_errors <= self.requests:
            problems.append(f"server_errors={self.server_errors}: expected 0..requests ({self.requests})")
        if not 0 <= self.feedback_correct <= self.feedback_total:
            problems.append(f"feedback_correct={self.feedback_correct}: expected 0..feedback_total "
                            f"({self.feedback_total})")
        if any(v < 0 for v in self.labels.values()):
            problems.append(f"labels={dict(self.labels)}: counts must be >= 0")
        if problems:
            raise ValueError("invalid arm snapshot: " + "; ".join(problems))

    def clipped_moments(self, cap_ms: float) -> Moments:
        """The moments of the clipped latencies (given, or computed from ``latency_ms``)."""
        if self.latency_clipped is not None:
            return self.latency_clipped
        return Moments.of(np.minimum(np.asarray(self.latency_ms, dtype=np.float64), cap_ms))


class ArmAccumulator:
    """Collects one arm's samples as they arrive; ``stats()`` is the snapshot at any moment."""

    def __init__(self, latency_cap_ms: float):
        self.cap = latency_cap_ms
        self.requests = self.server_errors = self.feedback_correct = self.feedback_total = 0
        self._latency: list[float] = []
        self._clipped = Moments()
        self._confidence = Moments()
        self._labels: Counter[str] = Counter()

    def answered(self, latency_ms: float, label: str | None = None, confidence: float | None = None) -> None:
        """One answered request: its latency, and its predicted label and top-class probability if known."""
        self.requests += 1
        self._latency.append(latency_ms)
        self._clipped = self._clipped.add(min(latency_ms, self.cap))
        if label is not None:
            self._labels[label] += 1
        if confidence is not None:
            self._confidence = self._confidence.add(confidence)

    def failed(self, server_error: bool = True) -> None:
        """One failed request; only server errors count against the arm's error rate."""
        self.requests += 1
        self.server_errors += int(server_error)

    def feedback(self, correct: bool) -> None:
        """One feedback outcome for a prediction this arm made."""
        self.feedback_total += 1
        self.feedback_correct += int(correct)

    def stats(self) -> ArmStats:
        return ArmStats(requests=self.requests, server_errors=self.server_errors,
                        latency_ms=np.asarray(self._latency, dtype=np.float64), latency_clipped=self._clipped,
                        labels=dict(self._labels), confidence=self._confidence,
                        feedback_correct=self.feedback_correct, feedback_total=self.feedback_total)
