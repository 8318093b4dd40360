"""The judge's history of looks in the store (``judge_looks``): one row per look, the look as JSON
(``experiments.judge.looks.look_of``), appended by whichever router replica looked.

Replicas do not coordinate: a replica looks when the newest stored look is older than its interval, so with
several replicas a look is stored about once per interval; two replicas that look at once store two rows a
moment apart, which is harmless (both are valid looks). Reading takes the newest ``limit`` rows, oldest first.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.store.base import Store

_INSERT = "INSERT INTO judge_looks (experiment, at, look) VALUES (?, ?, ?)"
_NEWEST_AT = "SELECT at FROM judge_looks WHERE experiment = ? ORDER BY id DESC LIMIT 1"
_NEWEST = "SELECT look FROM judge_looks WHERE experiment = ? ORDER BY id DESC LIMIT ?"


async def append_look(store: Store, experiment: str, look: dict[str, Any]) -> None:
    """Store one look of ``experiment`` (its ``at`` is the row's time)."""
    await store._run([(_INSERT, [(experiment, float(look["at"]), json.dumps(look, separators=(",", ":")))])])


async def newest_look_at(store: Store, experiment: str) -> float | None:
    """The time of ``experiment``'s newest stored look, None when there is none."""
    rows = await store._query(_NEWEST_AT, [experiment])
    return float(rows[0][0]) if rows else None


async def read_looks(store: Store, experiment: str, limit: int = 5000) -> list[dict[str, Any]]:
    """The newest ``limit`` looks of ``experiment``, oldest first."""
    rows = await store._query(_NEWEST, [experiment, limit])
    return [json.loads(r[0]) for r in reversed(rows)]
