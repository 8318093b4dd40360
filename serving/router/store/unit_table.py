"""The judge's input from the store: ``serving.judge.units.UnitTable`` over every replica's traffic.

The writer keeps ``unit_stats``, ``unit_labels`` and ``unit_latency`` up to date in the transaction of each
batch (``batch.py``), so reading the table costs one row per (arm, assigned arm, period, unit), whatever
the number of answers: five queries, the same SQL on SQLite and PostgreSQL. Rows are ordered here, in
Python, by (arm, assigned arm, period, unit), so both back-ends give the same table whatever their
collation. Rows of an arm not in ``arms`` (an arm since removed) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from serving.judge.units import PSEUDO_PREFIX, UnitTable, latency_bucket, tail_threshold_ms
from serving.router.store.batch import UNIT_SUMS

if TYPE_CHECKING:
    from serving.router.store.base import Store

_FLOAT_SUMS = {"latency_sum", "latency_sq", "confidence_sum", "confidence_sq"}
_KEY = "arm, assigned_arm, period, unit"
_STATS = f"SELECT {_KEY}, {', '.join(UNIT_SUMS)} FROM unit_stats WHERE experiment = ?"
_LABELS = f"SELECT {_KEY}, label, n FROM unit_labels WHERE experiment = ?"
_FIRST_LATENCIES = ("SELECT latency_s FROM answers WHERE experiment = ? AND arm = ? AND period IS NOT NULL "
                    "ORDER BY id LIMIT ?")
_TAIL = f"SELECT {_KEY}, SUM(n) FROM unit_latency WHERE experiment = ? AND bucket > ? GROUP BY {_KEY}"


async def read_unit_table(store: Store, experiment: str, arms: Sequence[str], quantile: float,
                          needed: int) -> UnitTable:
    """The table (see ``Store.unit_table``); ``periods`` are the experiment's revisions and their weights."""
    index = {a: i for i, a in enumerate(arms)}
    rows = [r for r in await store._query(_STATS, [experiment]) if r[0] in index and r[1] in index]
    rows.sort(key=lambda r: (index[r[0]], index[r[1]], int(r[2]), r[3]))
    position = {tuple(r[:4]): i for i, r in enumerate(rows)}
    n = len(rows)
    columns = list(zip(*rows, strict=True)) if rows else [()] * (4 + len(UNIT_SUMS))
    names = np.array(columns[3], dtype=str)
    _, unit = np.unique(names, return_inverse=True)
    sums = {name: np.array(columns[4 + i], dtype=np.float64 if name in _FLOAT_SUMS else np.int64)
            for i, name in enumerate(UNIT_SUMS)}

    labels: dict[str, np.ndarray] = {}
    for *key, label, count in await store._query(_LABELS, [experiment]):
        i = position.get(tuple(key))
        if i is not None:
            if label not in labels:
                labels[label] = np.zeros(n, dtype=np.int64)
            labels[label][i] = count

    first = await store._query(_FIRST_LATENCIES, [experiment, arms[0], needed])
    threshold = tail_threshold_ms(np.array([r[0] for r in first], dtype=np.float64) * 1000.0, quantile, needed)
    tail = None
    if threshold is not None:
        tail = np.zeros(n, dtype=np.int64)
        for *key, count in await store._query(_TAIL, [experiment, latency_bucket(threshold)]):
            i = position.get(tuple(key))
            if i is not None:
                tail[i] = int(count)  # PostgreSQL sums BIGINT as NUMERIC

    return UnitTable(
        arms=tuple(arms), periods=await store.periods(experiment),
        arm=np.array([index[a] for a in columns[0]], dtype=np.int64),
        assigned=np.array([index[a] for a in columns[1]], dtype=np.int64),
        period=np.array(columns[2], dtype=np.int64), unit=unit.astype(np.int64).reshape(n),
        keyed=~np.char.startswith(names, PSEUDO_PREFIX) if n else np.zeros(0, dtype=bool),
        labels={k: labels[k] for k in sorted(labels)}, tail=tail, tail_threshold_ms=threshold, **sums)
