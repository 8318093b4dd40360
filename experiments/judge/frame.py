"""The judge's working view of a ``UnitTable``: per-row arrays with a leading batch axis.

The judge and the simulation run the same code on it: ``judge(table)`` reads one table (batch 1), the
simulation thousands of simulated experiments at once (``simulate.py``). A row is a unit's sums in one
(arm, period); ``group`` numbers (arm, period) pairs as ``arm * P + period index``, the arm being the one
that *served* the row (a fallback's answer is the fallback model's answer), ``assigned`` the same with the
arm the row was assigned to (the sample-ratio check reads that one).

``unit`` maps rows to units (independent clusters); ``None`` says every request is a unit of its own, so
each row can be any sum of requests (a request-level table without one row per request: the simulation's
"naive" judgement uses it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from experiments.judge.ratio import Layout
from experiments.judge.units import UnitTable, weights_of

SUMS = ("requests", "server_errors", "answered", "latency_sum", "latency_sq", "predictions", "confidence_n",
        "confidence_sum", "confidence_sq", "feedback_n", "feedback_correct", "tail")
"""The additive per-row fields the judge reads (``tail``: zeros while the threshold is unknown)."""


@dataclass(frozen=True)
class Frame:
    """Rows of ``B`` experiments at once (shape ``(B, R)``); see the module docstring."""

    arms: tuple[str, ...]
    """Arm names, the control first."""
    shares: np.ndarray
    """``(P, A)``: each period's configured share of each arm (rows sum to 1), periods in time order."""
    group: np.ndarray
    """``(B, R)``: served arm * P + period index."""
    assigned: np.ndarray
    """``(B, R)``: assigned arm * P + period index."""
    unit: np.ndarray | None
    """``(R,)`` or ``(B, R)`` unit index in ``[0, n_units)``; None: every request is a unit of its own."""
    n_units: int
    keyed: np.ndarray
    """``(R,)`` or ``(B, R)``: the row is a sticky key's (False: a bucket of independently assigned requests)."""
    sums: Mapping[str, np.ndarray]
    """Each of ``SUMS``: ``(B, R)``."""
    labels: Mapping[str, np.ndarray]
    """Per predicted label, its count per row: ``(B, R)``."""
    tail_known: np.ndarray
    """``(B,)``: whether the tail threshold is set (``tail`` counts mean something)."""
    new_units: np.ndarray
    """``(B, P, A)``: units first seen in each period, by the arm they were assigned to there (each unkeyed
    request is a new unit)."""
    generative: bool = False
    """A generative experiment's frame: ``sums`` also holds ``experiments.generation.GENERATION_FIELDS`` and
    the judge reads the generative metrics (``config.metrics_of``)."""

    @property
    def batch(self) -> int:
        return self.group.shape[0]

    @property
    def n_periods(self) -> int:
        return self.shares.shape[0]

    @property
    def n_groups(self) -> int:
        return len(self.arms) * self.n_periods

    @cached_property
    def layout(self) -> Layout:
        """The served-arm layout every metric's contrast uses."""
        return Layout.of(self.group, self.unit, self.n_units, len(self.arms), self.n_periods)

    @classmethod
    def from_table(cls, table: UnitTable) -> Frame:
        """One table as a batch of one."""
        order = sorted(table.periods)
        weights = weights_of(table.periods, table.arms)
        shares = np.array([weights[p] for p in order]).reshape(len(order), len(table.arms))
        pidx = np.searchsorted(np.asarray(order), np.asarray(table.period)).astype(np.int64)
        P = len(order)
        arm, assigned = np.asarray(table.arm, dtype=np.int64), np.asarray(table.assigned, dtype=np.int64)
        _, unit = np.unique(np.asarray(table.unit), return_inverse=True)
        sums = {f: np.asarray(getattr(table, f), dtype=np.float64)[None] for f in SUMS if f != "tail"}
        tail = np.zeros(table.rows) if table.tail is None else np.asarray(table.tail, dtype=np.float64)
        sums["tail"] = tail[None]
        for f, values in table.generation.items():
            sums[f] = np.asarray(values, dtype=np.float64)[None]
        labels = {k: np.asarray(v, dtype=np.float64)[None] for k, v in table.labels.items()}
        keyed = np.asarray(table.keyed, dtype=bool)
        new = new_unit_counts(pidx, assigned, unit, keyed, sums["requests"][0], P, len(table.arms))
        return cls(tuple(table.arms), shares, (arm * P + pidx)[None], (assigned * P + pidx)[None], unit,
                   int(unit.max()) + 1 if table.rows else 0, keyed, sums, labels,
                   np.array([table.tail_threshold_ms is not None]), new[None], table.generative)


def new_unit_counts(period: np.ndarray, assigned: np.ndarray, unit: np.ndarray, keyed: np.ndarray,
                    requests: np.ndarray, n_periods: int, n_arms: int) -> np.ndarray:
    """``(P, A)``: each keyed unit counted once, in the period (and assigned arm) of its first row with a
    request; every unkeyed request counted as a unit of its own."""
    counts = np.zeros((n_periods, n_arms))
    seen = keyed & (requests > 0)
    if seen.any():
        u, p, a = unit[seen], period[seen], assigned[seen]
        order = np.lexsort((p, u))
        first = order[np.r_[True, u[order][1:] != u[order][:-1]]]
        np.add.at(counts, (p[first], a[first]), 1.0)
    free = ~keyed
    np.add.at(counts, (period[free], assigned[free]), requests[free])
    return counts
