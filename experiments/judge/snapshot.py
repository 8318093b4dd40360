"""``Moments``: count, sum and sum of squares of a stream of numbers (the router's and the store's
confidence moments per arm)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
