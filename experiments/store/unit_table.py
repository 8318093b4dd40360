"""The judge's input from the store: ``experiments.judge.units.UnitTable`` over every replica's traffic.

The writer keeps ``unit_stats``, ``unit_labels`` and ``unit_latency`` up to date in the transaction of each
batch (``batch.py``), so reading the table costs one row per (arm, assigned arm, period, unit) and one per
(row, label), whatever the number of answers: five queries, the same SQL on SQLite and PostgreSQL; label
and tail counts come keyed by their row's id and are placed with one vectorised search. Rows are ordered
here, by (arm, assigned arm, period, unit), so both back-ends give the same table whatever their
collation. Rows of an arm not in ``arms`` (an arm since removed) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from experiments.generation import GENERATION_FIELDS
from experiments.judge.units import PSEUDO_PREFIX, UnitTable, latency_bucket, tail_threshold_ms
from experiments.store.batch import STATS_SUMS, UNIT_SUMS

if TYPE_CHECKING:
    from experiments.judge import JudgeConfig
    from experiments.store.base import Store

_FLOAT_SUMS = {"latency_sum", "latency_sq", "confidence_sum", "confidence_sq"}
_STATS = f"SELECT id, arm, assigned_arm, period, unit, {', '.join(STATS_SUMS)} FROM unit_stats WHERE experiment = ?"
_LABELS = "SELECT row_id, label, n FROM unit_labels WHERE experiment = ?"
_FIRST_LATENCIES = ("SELECT latency_s FROM answers WHERE experiment = ? AND arm = ? AND period IS NOT NULL "
                    "ORDER BY id LIMIT ?")
_TAIL = "SELECT row_id, SUM(n) FROM unit_latency WHERE experiment = ? AND bucket > ? GROUP BY row_id"


class _Positions:
    """Where a ``unit_stats`` id is in the table: one vectorised search for a whole query's rows."""

    def __init__(self, ids: np.ndarray):
        self._order = np.argsort(ids)
        self._sorted = ids[self._order]

    def of(self, row_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(positions, mask): the table position of each id found, and which of ``row_ids`` were found (the
        others are rows of arms the table leaves out)."""
        ids = np.asarray(row_ids, dtype=np.int64)
        if not len(self._sorted) or not len(ids):
            return np.zeros(0, dtype=np.int64), np.zeros(len(ids), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        found = self._sorted[at] == ids
        return self._order[at[found]], found


async def read_unit_table(store: Store, experiment: str, arms: Sequence[str], quantile: float,
                          needed: int) -> UnitTable:
    """The table (see ``Store.unit_table``); ``periods`` are the experiment's revisions and their weights."""
    index = {a: i for i, a in enumerate(arms)}
    stats = [r for r in await store._query(_STATS, [experiment]) if r[1] in index and r[2] in index]
    columns = list(zip(*stats, strict=True)) if stats else [()] * (5 + len(STATS_SUMS))
    arm = np.array([index[a] for a in columns[1]], dtype=np.int64)
    assigned = np.array([index[a] for a in columns[2]], dtype=np.int64)
    period = np.array(columns[3], dtype=np.int64)
    names = np.array(columns[4], dtype=str)
    _, unit = np.unique(names, return_inverse=True)  # equal ints: the same unit, in any arm and period
    unit = unit.reshape(-1).astype(np.int64)
    order = np.lexsort((unit, period, assigned, arm))
    where = _Positions(np.array(columns[0], dtype=np.int64)[order])
    n = len(stats)

    labels: dict[str, np.ndarray] = {}
    found = await store._query(_LABELS, [experiment])
    at, mask = where.of([r[0] for r in found])
    label_of = np.array([r[1] for r in found], dtype=str)[mask]
    counts = np.array([r[2] for r in found], dtype=np.int64)[mask]
    for label in np.unique(label_of).tolist():
        labels[label] = np.zeros(n, dtype=np.int64)
        labels[label][at[label_of == label]] = counts[label_of == label]

    first = await store._query(_FIRST_LATENCIES, [experiment, arms[0], needed])
    threshold = tail_threshold_ms(np.array([r[0] for r in first], dtype=np.float64) * 1000.0, quantile, needed)
    tail = None
    if threshold is not None:
        tail = np.zeros(n, dtype=np.int64)
        found = await store._query(_TAIL, [experiment, latency_bucket(threshold)])
        at, mask = where.of([r[0] for r in found])
        tail[at] = np.array([int(r[1]) for r in found], dtype=np.int64)[mask]  # int(): PostgreSQL's NUMERIC sum

    sums = {name: np.array(columns[5 + i], dtype=np.float64 if name in _FLOAT_SUMS else np.int64)[order]
            for i, name in enumerate(UNIT_SUMS)}
    generation = {name: np.array(columns[5 + len(UNIT_SUMS) + i], dtype=np.float64)[order]
                  for i, name in enumerate(GENERATION_FIELDS)}
    if not any(v.any() for v in generation.values()):
        generation = {}  # a classifier's table: no generative metrics
    return UnitTable(
        arms=tuple(arms), periods=await store.periods(experiment), arm=arm[order], assigned=assigned[order],
        period=period[order], unit=unit[order], keyed=~np.char.startswith(names[order], PSEUDO_PREFIX),
        labels=labels, tail=tail, tail_threshold_ms=threshold, generation=generation, **sums)


async def table_for(store: Store, experiment: str, arms: Sequence[str], config: JudgeConfig) -> UnitTable:
    """``store.unit_table`` with the tail threshold ``config`` sets (its ``quantile`` of the control's first
    ``min_samples.latency_p99`` answers): what the router's report, ``serving report --store`` and the rollout
    controller read, so they judge the same table."""
    return await store.unit_table(experiment, tuple(arms), config.quantile, config.min_samples.latency_p99)
