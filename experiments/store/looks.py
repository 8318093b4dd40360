"""The judge's history of looks in the store (``judge_looks``): one row per look, the look as JSON
(``experiments.judge.looks.look_of``), appended by whichever router replica looked.

Replicas do not coordinate: a replica looks when the newest stored look is older than its interval, so with
several replicas a look is stored about once per interval; two replicas that look at once store two rows a
moment apart, which is harmless (both are valid looks). Reading takes the newest ``limit`` rows, oldest first.

The table is thinned as it ages (``thin_looks``, run by the router's store sweep, ``experiments.retention``'s
``look_retention``): every look of the newest period, then the first look of each minute, then the first of
each hour. Minutes and hours are aligned to the clock, so a look kept as its hour's first was its minute's first
too: replicas that thin at different moments agree, and thinning twice at one moment drops nothing more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from experiments.retention import LookRetention

if TYPE_CHECKING:
    from experiments.store.base import Store

_INSERT = "INSERT INTO judge_looks (experiment, at, look) VALUES (?, ?, ?)"
_NEWEST_AT = "SELECT at FROM judge_looks WHERE experiment = ? ORDER BY id DESC LIMIT 1"
_NEWEST = "SELECT look FROM judge_looks WHERE experiment = ? ORDER BY id DESC LIMIT ?"
_AGED = "SELECT id, at FROM judge_looks WHERE experiment = ? AND at < ?"
_DELETE = "DELETE FROM judge_looks WHERE id = ?"


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


def looks_to_drop(rows: Iterable[tuple[int, float]], now: float, policy: LookRetention) -> list[int]:
    """The ids among ``(id, at)`` rows that ``policy`` drops at ``now``: those past ``max_age_s``, and every
    look but the first (earliest, then lowest id) of its clock minute or hour in the thinned ages."""
    seen: set[tuple[float, int]] = set()
    drop: list[int] = []
    for row_id, at in sorted(rows, key=lambda r: (r[1], r[0])):
        spacing = policy.spacing(at, now)
        if spacing is None:
            drop.append(row_id)
        elif spacing > 0:
            bucket = (spacing, math.floor(at / spacing))
            if bucket in seen:
                drop.append(row_id)
            seen.add(bucket)
    return drop


async def thin_looks(store: Store, experiment: str, policy: LookRetention, now: float) -> int:
    """Delete the looks of ``experiment`` that ``policy`` drops at ``now`` (``looks_to_drop``); return how many."""
    rows = await store._query(_AGED, [experiment, now - policy.every_look_s])
    drop = looks_to_drop(((int(i), float(at)) for i, at in rows), now, policy)
    if not drop:
        return 0
    return (await store._run([(_DELETE, [(i,) for i in drop])]))[0]
