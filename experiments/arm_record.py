"""What one arm of an experiment did: ``ArmRecord`` (requests, errors, labels, feedback, shadow agreement,
confidence, recent latencies), filled by the router's recorder, read back from the store, read by the report
and the rollout controller."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from experiments.generation import GenerationTotals
from experiments.judge.snapshot import Moments


class Window:
    """The last ``capacity`` float samples, in a ring buffer."""

    def __init__(self, capacity: int):
        self._buf = np.empty(capacity, dtype=np.float64)
        self._n = 0

    def add(self, value: float) -> None:
        self._buf[self._n % len(self._buf)] = value
        self._n += 1

    def values(self) -> np.ndarray:
        return self._buf[: min(self._n, len(self._buf))].copy()


@dataclass
class ArmRecord:
    """Everything the report needs about one arm (or the shadow)."""

    latency: Window | np.ndarray
    """Recent latencies in seconds (a ``Window`` while recording, an array in a snapshot)."""
    requests: int = 0
    errors: Counter = field(default_factory=Counter)
    """Server-side failures by code (503, 504, 500): what counts against the arm."""
    client_errors: Counter = field(default_factory=Counter)
    """The callers' mistakes by code (400, 413, ...): refused by the router or by Triton, not the arm's fault."""
    labels: Counter = field(default_factory=Counter)
    fallbacks_in: int = 0
    feedback_correct: int = 0
    feedback_total: int = 0
    shadow_agree: int = 0
    shadow_compared: int = 0
    shadow_dropped: int = 0
    confidence: Moments = field(default_factory=Moments)
    """Moments of the top-class probability of each prediction (the judge's label-free mean confidence)."""
    generation: GenerationTotals | None = None
    """A generative arm's stream figures and quality feedback (``experiments.generation``); None: a classifier's."""
