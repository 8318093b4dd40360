"""The experiment store's one interface and its errors; the SQL shared by both back-ends.

A back-end (``sqlite.py``, ``postgres.py``) supplies a connection, a transaction and the placeholder
style; everything the router asks of a store -- revisions of the experiment (the audit log), the records
written in batches (``batch.py``), feedback (``feedback.py``), the per-arm snapshot the report consumes,
the judge's unit table (``unit_table.py``) and the drift monitor's windows (``drift_windows.py``) -- is written
once, in SQL both databases accept.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.arm_record import ArmRecord
from experiments.generation import GenerationTotals, reference_score
from experiments.judge.snapshot import Moments
from experiments.store import feedback
from experiments.store.batch import Statement, batch_statements
from experiments.store.drift_windows import DriftWindow, read_drift_windows
from experiments.store.looks import append_look, newest_look_at, read_looks
from experiments.store.records import (
    LABEL_SEP,
    AnswerRow,
    DriftReferenceRow,
    DriftSample,
    ErrorRow,
    Record,
    ShadowRow,
)
from experiments.store.unit_table import read_unit_table

if TYPE_CHECKING:
    from experiments.judge.units import UnitTable

log = logging.getLogger(__name__)


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (down, refused, timed out); the router keeps serving without it."""


class DuplicateFeedback(StoreError):
    """Feedback for a request id that already has feedback."""


@dataclass(frozen=True)
class Revision:
    """One revision of an experiment's spec: an audit-log entry (who changed it, when, why)."""

    experiment: str
    revision: int
    spec: dict[str, Any]
    source: str
    """"file" (an experiment-file revision) or "admin" (a weight change through the admin API)."""
    who: str
    why: str
    at: float
    """Unix time, seconds."""

    def weights(self) -> dict[str, float]:
        return spec_weights(self.spec)


def spec_weights(spec: dict[str, Any]) -> dict[str, float]:
    """Each arm's weight in a stored spec (the keys of an experiment file)."""
    return {a["name"]: a.get("weight", 1.0) for a in spec.get("arms", [])}


def audit_entry(rev: Revision) -> dict:
    """One audit-log line: revision, when (ISO, UTC), who, source, why, the weights."""
    return {"revision": rev.revision, "at": dt.datetime.fromtimestamp(rev.at, dt.UTC).isoformat(timespec="seconds"),
            "who": rev.who, "source": rev.source, "why": rev.why, "weights": rev.weights()}


class Store(abc.ABC):
    """The experiment store. Every method is async; a store that cannot be reached raises ``StoreUnavailable``.

    Back-ends implement ``_run`` (statements in one transaction) and ``_query`` (rows of one SELECT),
    with ``?`` placeholders, plus opening, closing, ``wait_for_change`` and ``_lock_statements``.
    """

    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to the newest migration."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abc.abstractmethod
    async def _run(self, statements: Sequence[Statement]) -> list[int]:
        """Each ``(sql, rows)``: ``executemany(sql, rows)``, all in one transaction; the rows each changed."""

    @abc.abstractmethod
    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one SELECT."""

    @abc.abstractmethod
    async def _add_revision_sql(self, row: tuple) -> None:
        """Insert ``(experiment, spec, source, who, why, at)`` as the next revision number and wake up the
        other replicas, in one transaction."""

    def _lock_statements(self, experiment: str) -> list[Statement]:
        """Statements that, first in a transaction, serialise it with every other one that writes answers
        or feedback of ``experiment`` (see ``feedback.py``); none where transactions are serial already."""
        return []

    async def __aenter__(self) -> Store:
        """``async with open_store(url) as store:`` opens it (schema migrated) and closes it on the way out."""
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def wait_for_change(self, experiment: str, timeout: float) -> None:
        """Return when a new revision of ``experiment`` may exist, or after ``timeout`` s (polling)."""
        await asyncio.sleep(timeout)

    # -- revisions (the audit log) ---------------------------------------------------------------------------

    async def add_revision(self, experiment: str, spec: dict[str, Any], source: str, who: str, why: str) -> Revision:
        """Store a new revision of ``experiment``'s spec and return it (numbers go 1, 2, 3, ...)."""
        await self._add_revision_sql((experiment, json.dumps(spec, sort_keys=True), source, who, why, time.time()))
        latest = await self.latest_revision(experiment)
        assert latest is not None
        return latest

    async def latest_revision(self, experiment: str, source: str | None = None) -> Revision | None:
        where, params = "experiment = ?", [experiment]
        if source:
            where, params = where + " AND source = ?", params + [source]
        rows = await self._query(f"SELECT experiment, revision, spec, source, who, why, at FROM revisions "
                                 f"WHERE {where} ORDER BY revision DESC LIMIT 1", params)
        return _revision(rows[0]) if rows else None

    async def revisions(self, experiment: str, limit: int = 100) -> list[Revision]:
        """The newest ``limit`` revisions, oldest first."""
        rows = await self._query("SELECT experiment, revision, spec, source, who, why, at FROM revisions "
                                 "WHERE experiment = ? ORDER BY revision DESC LIMIT ?", [experiment, limit])
        return [_revision(r) for r in reversed(rows)]

    async def periods(self, experiment: str) -> dict[int, dict[str, float]]:
        """Every revision's weights by revision number: the periods of the judge's unit table."""
        rows = await self._query("SELECT revision, spec FROM revisions WHERE experiment = ?", [experiment])
        return {int(r): spec_weights(json.loads(spec)) for r, spec in rows}

    async def experiments(self) -> list[str]:
        return [r[0] for r in await self._query("SELECT DISTINCT experiment FROM revisions ORDER BY experiment")]

    # -- answers, errors, shadow copies ---------------------------------------------------------------------

    async def write_batch(self, records: Sequence[Record]) -> None:
        """Write a batch of records and every aggregate kept beside them in one transaction, then join the
        pending feedback of its experiments (``join_feedback``) right after it. The batch is summed in a worker
        thread (~10 us a record): the event loop, serving requests, only waits for it in GIL slices."""
        statements = await asyncio.to_thread(batch_statements, records)
        if statements:
            await self._run(statements)
        for experiment in sorted({r.experiment for r in records if isinstance(r, AnswerRow)}):
            await self.join_feedback(experiment)

    async def count_answers(self, experiment: str) -> int:
        return int((await self._query("SELECT COUNT(*) FROM answers WHERE experiment = ?", [experiment]))[0][0])

    async def exposure(self, experiment: str, arm: str, since: float = 0.0) -> tuple[int, int]:
        """(answers, distinct sticky keys) that ``arm`` served since ``since`` (Unix time): who saw it."""
        rows = await self._query("SELECT COUNT(*), COUNT(DISTINCT key_hash) FROM answers "
                                 "WHERE experiment = ? AND arm = ? AND at >= ?", [experiment, arm, since])
        return int(rows[0][0]), int(rows[0][1])

    async def answer_ids(self, experiment: str) -> set[str]:
        return {r[0] for r in await self._query("SELECT request_id FROM answers WHERE experiment = ?", [experiment])}

    # -- feedback (feedback.py) -----------------------------------------------------------------------------

    async def add_feedback(self, experiment: str, request_id: str, labels: tuple[str, ...]) -> tuple[str, bool] | None:
        """Record the true ``labels`` of a request, once per request id: (arm, correct) when its answer is in the
        store (joined at once), None when it is kept pending until the answer arrives. Raises
        ``DuplicateFeedback`` when the id already has feedback, pending or joined."""
        locks = self._lock_statements(experiment)
        counts = await self._run([*locks, *feedback.add(experiment, request_id, labels, time.time())])
        if counts[len(locks)] == 0:  # feedback.ADD_PENDING inserted nothing
            raise DuplicateFeedback(request_id)
        rows = await self._query("SELECT arm, correct FROM feedback WHERE experiment = ? AND request_id = ?",
                                 [experiment, request_id])
        return (rows[0][0], bool(rows[0][1])) if rows else None

    async def add_quality(self, experiment: str, request_id: str, score: float | None,
                          reference: str | None = None) -> tuple[str, float] | None:
        """Record quality feedback on a generative answer, once per request id: a ``score`` in [0, 1], or a
        ``reference`` text its answer is scored against once the answer's text is in the store. (arm, score) when
        it joined its answer at once, None when it is kept pending until the answer arrives (``feedback.py``).
        Raises ``DuplicateFeedback`` when the id already has quality feedback, pending or joined."""
        locks = self._lock_statements(experiment)
        counts = await self._run([*locks, *feedback.add_quality(experiment, request_id, score, reference, time.time())])
        if counts[len(locks)] == 0:  # feedback.ADD_PENDING_QUALITY inserted nothing
            raise DuplicateFeedback(request_id)
        if score is None:
            await self.join_feedback(experiment)  # its answer's text may be in: scored and joined now
        rows = await self._query("SELECT arm, score FROM quality_feedback WHERE experiment = ? AND request_id = ?",
                                 [experiment, request_id])
        return (rows[0][0], float(rows[0][1])) if rows else None

    async def answer_text(self, experiment: str, request_id: str) -> str | None:
        """A generative answer's text while it is kept (``feedback_pending_s``), else None."""
        rows = await self._query("SELECT text FROM answer_texts WHERE experiment = ? AND request_id = ?",
                                 [experiment, request_id])
        return rows[0][0] if rows else None

    async def join_feedback(self, experiment: str) -> None:
        """Join ``experiment``'s pending feedback to its answers that are in the store (``feedback.join``,
        ``feedback.join_quality``, the pending references scored first), under the experiment's lock: after every
        batch that stores answers, and before expiring."""
        scores = await self._score_references(experiment)
        await self._run([*self._lock_statements(experiment), *feedback.join(experiment),
                         *feedback.score(experiment, scores), *feedback.join_quality(experiment)])

    async def _score_references(self, experiment: str) -> list[tuple[str, float]]:
        """(request id, score) of each pending reference whose answer's text is in the store (scored in a
        worker thread: ROUGE-L is Python)."""
        rows = await self._query(feedback.UNSCORED, [experiment])
        if not rows:
            return []
        return await asyncio.to_thread(lambda: [(r, reference_score(text, ref)) for r, ref, text in rows])

    async def expire_feedback(self, experiment: str, older_than: float) -> int:
        """Delete the feedback still pending (labels and quality) that arrived before ``older_than`` (Unix time),
        count it in the report's expired feedback, and return how many this call expired. Joins what can be
        joined first."""
        scores = await self._score_references(experiment)
        counts = await self._run([*self._lock_statements(experiment), *feedback.join(experiment),
                                  *feedback.score(experiment, scores), *feedback.join_quality(experiment),
                                  *feedback.expire(experiment, older_than)])
        return counts[-1] + counts[-2]

    async def feedback_counts(self, experiment: str) -> dict[str, int]:
        """``{"pending": n, "expired": n}``: feedback (labels and quality) waiting for its answer now, and expired
        so far."""
        pending = await self._query("SELECT (SELECT COUNT(*) FROM pending_feedback WHERE experiment = ?) + "
                                    "(SELECT COUNT(*) FROM pending_quality WHERE experiment = ?)", [experiment, experiment])
        expired = await self._query("SELECT n FROM expired_feedback WHERE experiment = ?", [experiment])
        return {"pending": int(pending[0][0]), "expired": int(expired[0][0]) if expired else 0}

    # -- the report's data ----------------------------------------------------------------------------------

    async def snapshot(self, experiment: str, latency_window: int) -> dict[str, dict]:
        """The per-arm data ``build_report`` consumes, over all replicas' traffic.

        Counts, labels, errors, fallbacks, feedback and shadow agreement are aggregated in SQL over every
        row (answers through ``answer_counts``, which each batch updates); latency arrays are the newest
        ``latency_window`` answers per arm (the in-memory window's rule). ``"feedback"``: the pending and
        expired feedback (``feedback_counts``).
        """
        arms: dict[str, ArmRecord] = {}
        shadow: dict[str, ArmRecord] = {}

        def rec(table: dict[str, ArmRecord], name: str) -> ArmRecord:
            return table.setdefault(name, ArmRecord(latency=np.empty(0)))

        for arm, assigned, labels, n in await self._query(
                "SELECT arm, assigned_arm, labels, n FROM answer_counts WHERE experiment = ?", [experiment]):
            r = rec(arms, arm)
            r.requests += n
            r.fallbacks_in += n if assigned != arm else 0
            for label in _labels(labels):
                r.labels[label] += n
        for arm, code, kind, n in await self._query("SELECT arm, code, kind, COUNT(*) FROM errors "
                                                    "WHERE experiment = ? GROUP BY arm, code, kind", [experiment]):
            r = rec(arms, arm)
            (r.client_errors if kind == "client" else r.errors)[code] += n
        for arm, correct, n in await self._query("SELECT arm, correct, COUNT(*) FROM feedback WHERE experiment = ? "
                                                 "GROUP BY arm, correct", [experiment]):
            r = rec(arms, arm)
            r.feedback_total += n
            r.feedback_correct += n if correct else 0
        for name, outcome, agree, labels, n in await self._query(
                "SELECT shadow, outcome, agree, labels, COUNT(*) FROM shadows WHERE experiment = ? "
                "GROUP BY shadow, outcome, agree, labels", [experiment]):
            r = rec(shadow, name)
            if outcome == "dropped":
                r.shadow_dropped += n
            elif outcome == "error":
                r.errors["error"] += n
            else:
                r.requests += n
                for label in _labels(labels):
                    r.labels[label] += n
                if agree is not None:
                    r.shadow_compared += n
                    r.shadow_agree += n if agree else 0
        for arm, n, total, total_sq in await self._query(
                "SELECT arm, n, total, total_sq FROM confidence_moments WHERE experiment = ?", [experiment]):
            rec(arms, arm).confidence = Moments(int(n), float(total), float(total_sq))
        for arm, *sums in await self._query(_GENERATION_TOTALS, [experiment]):
            if any(sums):
                rec(arms, arm).generation = GenerationTotals(int(sums[0]), float(sums[1]), int(sums[2]), float(sums[3]),
                                                             int(sums[4]), float(sums[5]), int(sums[6]), float(sums[7]))
        for name, r in arms.items():
            r.latency = await self._latencies("answers", "arm", experiment, name, latency_window)
        for name, r in shadow.items():
            r.latency = await self._latencies("shadows", "shadow", experiment, name, latency_window)
        return {"arms": arms, "shadow": shadow, "feedback": await self.feedback_counts(experiment)}

    async def _latencies(self, table: str, column: str, experiment: str, name: str, limit: int) -> np.ndarray:
        rows = await self._query(f"SELECT latency_s FROM {table} WHERE experiment = ? AND {column} = ? "
                                 f"AND latency_s IS NOT NULL ORDER BY id DESC LIMIT ?", [experiment, name, limit])
        return np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))


    # -- the judge's unit table and the drift monitor's windows ------------------------------------------------

    async def unit_table(self, experiment: str, arms: Sequence[str], quantile: float, needed: int) -> UnitTable:
        """``experiment``'s ``experiments.judge.units.UnitTable`` over every replica's traffic (``unit_table.py``):
        ``arms`` the control first, the tail threshold at the ``quantile`` of the control's first ``needed``
        answers."""
        return await read_unit_table(self, experiment, tuple(arms), quantile, needed)

    async def drift_windows(self, experiment: str) -> dict[str, DriftWindow]:
        """Per arm, its newest monitored texts and the reference they are compared with (``drift_windows.py``)."""
        return await read_drift_windows(self, experiment)

    # -- the judge's history of looks (looks.py) --------------------------------------------------------------

    async def append_look(self, experiment: str, look: dict[str, Any]) -> None:
        """Store one look of the judge (``experiments.judge.looks.look_of``)."""
        await append_look(self, experiment, look)

    async def newest_look_at(self, experiment: str) -> float | None:
        """When the newest stored look was taken (Unix time), None when there is none."""
        return await newest_look_at(self, experiment)

    async def looks(self, experiment: str, limit: int = 5000) -> list[dict[str, Any]]:
        """The newest ``limit`` looks, oldest first."""
        return await read_looks(self, experiment, limit)


_GENERATION_TOTALS = ("SELECT arm, SUM(streams), SUM(ttft_sum), SUM(gaps), SUM(itl_sum), SUM(output_tokens), "
                      "SUM(seconds), SUM(quality_n), SUM(quality_sum) FROM unit_stats WHERE experiment = ? GROUP BY arm")
"""A generative arm's ``GenerationTotals`` from its units' sums (classifier arms' are all 0)."""


def _labels(text: str | None) -> tuple[str, ...]:
    return tuple(text.split(LABEL_SEP)) if text else ()


def _revision(row: tuple) -> Revision:
    experiment, revision, spec, source, who, why, at = row
    return Revision(experiment, int(revision), json.loads(spec), source, who, why, float(at))


__all__ = ["AnswerRow", "DriftReferenceRow", "DriftSample", "DuplicateFeedback", "ErrorRow", "Record", "Revision",
           "ShadowRow", "Store", "StoreError", "StoreUnavailable"]
