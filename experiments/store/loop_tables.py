"""The loop's tables in the experiment store: kept inputs joined to their feedback, the loop's steps, its lease.

* ``kept_inputs``: the input texts of a sample of answers (opt-in: ``experiments.retention``), one row per
  request id; joined to ``feedback`` on the request id they are the loop's new training data
  (``labelled_inputs``). ``delete_inputs`` deletes the rows older than the retention period.
* ``loop_steps``: one row per step of a retrain cycle (``LoopLog.record``): the trigger that started the
  cycle, the step's output as JSON, who ran it, when. It is the loop's audit log, and what a rerun resumes
  from: a step already recorded is never run again.
* ``loop_leases``: one row per loop; a loop holds it (``LoopLog.acquire``) while it runs a cycle, and it
  expires ``lease_s`` after the last renewal, so a crashed holder blocks nobody for longer than that.

SQL both SQLite (3.24+) and PostgreSQL accept, run through the store's ``_run`` and ``_query``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from experiments.store.records import LABEL_SEP

if TYPE_CHECKING:
    from experiments.store.base import Store

_LABELLED = ("SELECT k.request_id, k.arm, k.texts, f.labels, k.at FROM kept_inputs k JOIN feedback f "
             "ON f.experiment = k.experiment AND f.request_id = k.request_id "
             "WHERE k.experiment = ? AND k.at >= ? ORDER BY k.at, k.request_id")
_COUNT_LABELLED = ("SELECT COUNT(*) FROM kept_inputs k JOIN feedback f ON f.experiment = k.experiment "
                   "AND f.request_id = k.request_id WHERE k.experiment = ? AND k.at >= ?")
_DELETE_INPUTS = "DELETE FROM kept_inputs WHERE experiment = ? AND at < ?"
_ACQUIRE = ("INSERT INTO loop_leases (loop, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (loop) DO UPDATE "
            "SET holder = excluded.holder, expires_at = excluded.expires_at "
            "WHERE loop_leases.holder = excluded.holder OR loop_leases.expires_at < ?")
_RELEASE = "DELETE FROM loop_leases WHERE loop = ? AND holder = ?"
_RECORD = ("INSERT INTO loop_steps (loop, cycle, step, trigger, output, who, at) VALUES (?, ?, ?, ?, ?, ?, ?) "
           "ON CONFLICT (loop, cycle, step) DO NOTHING")


@dataclass(frozen=True)
class LabelledInput:
    """A kept input joined to its feedback: one request's texts and their true labels."""

    request_id: str
    arm: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    at: float
    """When it was answered (Unix time): the data set is split by it, older to train, newest to evaluate."""


async def labelled_inputs(store: Store, experiment: str, since: float = 0.0) -> list[LabelledInput]:
    """Every kept input of ``experiment`` answered at or after ``since`` that has feedback, oldest first."""
    rows = await store._query(_LABELLED, [experiment, since])
    return [LabelledInput(rid, arm, tuple(json.loads(texts)), tuple(labels.split(LABEL_SEP)), float(at))
            for rid, arm, texts, labels, at in rows]


async def count_labelled(store: Store, experiment: str, since: float = 0.0) -> int:
    """How many kept inputs answered at or after ``since`` have feedback (the "new labels" trigger)."""
    return int((await store._query(_COUNT_LABELLED, [experiment, since]))[0][0])


async def delete_inputs(store: Store, experiment: str, older_than: float) -> int:
    """Delete the kept inputs answered before ``older_than`` (Unix time); return how many."""
    return (await store._run([(_DELETE_INPUTS, [(experiment, older_than)])]))[0]


@dataclass(frozen=True)
class StepRow:
    """One recorded step of a retrain cycle."""

    cycle: int
    step: str
    trigger: str
    output: dict[str, Any]
    who: str
    at: float


class LoopLog:
    """One loop's steps and lease in ``store`` (the loop is named after its experiment)."""

    def __init__(self, store: Store, loop: str):
        self.store, self.loop = store, loop

    async def acquire(self, holder: str, lease_s: float) -> bool:
        """Take (or renew) the lease for ``lease_s`` seconds; False when another holder's lease is unexpired."""
        now = time.time()
        return (await self.store._run([(_ACQUIRE, [(self.loop, holder, now + lease_s, now)])]))[0] > 0

    async def release(self, holder: str) -> None:
        """Give the lease back (only ``holder``'s own)."""
        await self.store._run([(_RELEASE, [(self.loop, holder)])])

    async def holder(self) -> tuple[str, float] | None:
        """(holder, expires_at) of the lease, or None when no one holds it."""
        rows = await self.store._query("SELECT holder, expires_at FROM loop_leases WHERE loop = ?", [self.loop])
        return (rows[0][0], float(rows[0][1])) if rows else None

    async def record(self, cycle: int, step: str, trigger: str, output: dict[str, Any], who: str) -> bool:
        """Record ``step`` of ``cycle`` with its output; False (and nothing written) when it was recorded already."""
        row = (self.loop, cycle, step, trigger, json.dumps(output, sort_keys=True, default=str), who, time.time())
        return (await self.store._run([(_RECORD, [row])]))[0] > 0

    async def steps(self, cycle: int | None = None) -> list[StepRow]:
        """The recorded steps of ``cycle`` (None: of every cycle), in the order they were recorded."""
        where, params = ("loop = ?", [self.loop]) if cycle is None else ("loop = ? AND cycle = ?", [self.loop, cycle])
        rows = await self.store._query(f"SELECT cycle, step, trigger, output, who, at FROM loop_steps WHERE {where} "
                                       "ORDER BY id", params)
        return [StepRow(int(c), s, t, json.loads(o), w, float(a)) for c, s, t, o, w, a in rows]

    async def last_cycle(self) -> int:
        """The newest cycle number (0: none yet)."""
        rows = await self.store._query("SELECT MAX(cycle) FROM loop_steps WHERE loop = ?", [self.loop])
        return int(rows[0][0] or 0)


async def exposure_by_version(store: Store, experiment: str, since: float = 0.0) -> dict[str, dict[str, int]]:
    """Per served version of ``experiment`` since ``since``: answers and distinct sticky keys (users)."""
    rows = await store._query("SELECT version, COUNT(*), COUNT(DISTINCT key_hash) FROM answers WHERE experiment = ? "
                              "AND at >= ? GROUP BY version ORDER BY version", [experiment, since])
    return {str(v): {"answers": int(n), "users": int(u)} for v, n, u in rows}
