"""The experiment store's one interface, its records and its errors; the SQL shared by both back-ends.

A back-end (``sqlite.py``, ``postgres.py``) supplies a connection, a transaction and the placeholder
style; everything the router asks of a store -- revisions of the experiment (the audit log), answer,
error and shadow rows written in batches, feedback, the per-arm snapshot the report consumes -- is
written once here, in SQL both databases accept.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.judge.snapshot import Moments
from serving.router.metrics import ArmRecord

log = logging.getLogger(__name__)

LABEL_SEP = "\x1f"
"""Separator of the predicted labels of one answer in its ``labels`` column (unit separator)."""


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
        return {a["name"]: a.get("weight", 1.0) for a in self.spec.get("arms", [])}


@dataclass(frozen=True, slots=True)
class AnswerRow:
    """One answered request."""

    experiment: str
    request_id: str
    arm: str
    """The arm that served it."""
    assigned_arm: str
    """The arm it was assigned to (differs from ``arm`` after a fallback)."""
    version: str
    key: str | None
    """The sticky key; only its hash is stored."""
    latency_s: float
    labels: tuple[str, ...]
    at: float
    confidences: tuple[float, ...] = ()
    """The top-class probability of each prediction (stored: their mean, and their moments per arm)."""


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One failed request, by arm and HTTP status (4xx: the client's, 5xx: the server's or upstream's)."""

    experiment: str
    arm: str
    code: str
    at: float

    @property
    def kind(self) -> str:
        return "client" if self.code.isdigit() and int(self.code) < 500 else "server"


@dataclass(frozen=True, slots=True)
class ShadowRow:
    """One shadow copy: ``outcome`` is ok, error or dropped; ``agree`` None when not compared."""

    experiment: str
    shadow: str
    primary_arm: str
    outcome: str
    latency_s: float | None
    labels: tuple[str, ...]
    agree: bool | None
    at: float


Record = AnswerRow | ErrorRow | ShadowRow


def key_hash(key: str | None) -> str | None:
    """A 16-hex-digit BLAKE2b hash of the sticky key: enough to group by user, not to read the key."""
    return None if key is None else hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class Store(abc.ABC):
    """The experiment store. Every method is async; a store that cannot be reached raises ``StoreUnavailable``.

    Back-ends implement ``_run`` (statements in one transaction) and ``_query`` (rows of one SELECT),
    with ``?`` placeholders, plus opening, closing, ``wait_for_change`` and ``_unique_violation``.
    """

    url: str
    _unique_violation: type[Exception]
    """The back-end's error for a row that breaks a UNIQUE constraint (feedback sent twice)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to the newest migration."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abc.abstractmethod
    async def _run(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Each ``(sql, rows)``: ``executemany(sql, rows)``, all in one transaction."""

    @abc.abstractmethod
    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one SELECT."""

    @abc.abstractmethod
    async def _add_revision_sql(self, row: tuple) -> None:
        """Insert ``(experiment, spec, source, who, why, at)`` as the next revision number and wake up the
        other replicas, in one transaction."""

    async def __aenter__(self) -> Store:
        """``async with open_store(url) as store:`` opens it (schema migrated) and closes it on the way out."""
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def wait_for_change(self, experiment: str, timeout: float) -> None:
        """Return when a new revision of ``experiment`` may exist, or after ``timeout`` s (polling)."""
        import asyncio

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

    async def experiments(self) -> list[str]:
        return [r[0] for r in await self._query("SELECT DISTINCT experiment FROM revisions ORDER BY experiment")]

    # -- answers, errors, shadow copies ---------------------------------------------------------------------

    async def write_batch(self, records: Sequence[Record]) -> None:
        """Write a batch of records in one transaction."""
        answers = [(r.experiment, r.request_id, r.arm, r.assigned_arm, r.version, key_hash(r.key), r.latency_s,
                    LABEL_SEP.join(r.labels), r.at, sum(r.confidences) / len(r.confidences) if r.confidences else None)
                   for r in records if isinstance(r, AnswerRow)]
        moments: dict[tuple[str, str], list[float]] = {}
        for r in records:
            if isinstance(r, AnswerRow) and r.confidences:
                m = moments.setdefault((r.experiment, r.arm), [0, 0.0, 0.0])
                m[0] += len(r.confidences)
                m[1] += sum(r.confidences)
                m[2] += sum(x * x for x in r.confidences)
        errors = [(r.experiment, r.arm, r.code, r.kind, r.at) for r in records if isinstance(r, ErrorRow)]
        counts = Counter((r.experiment, r.arm, r.assigned_arm, LABEL_SEP.join(r.labels))
                         for r in records if isinstance(r, AnswerRow))
        shadows = [(r.experiment, r.shadow, r.primary_arm, r.outcome, r.latency_s, LABEL_SEP.join(r.labels),
                    None if r.agree is None else int(r.agree), r.at) for r in records if isinstance(r, ShadowRow)]
        statements = [
            ("INSERT INTO answers (experiment, request_id, arm, assigned_arm, version, key_hash, latency_s, labels, at, "
             "confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", answers),
            ("INSERT INTO errors (experiment, arm, code, kind, at) VALUES (?, ?, ?, ?, ?)", errors),
            ("INSERT INTO shadows (experiment, shadow, primary_arm, outcome, latency_s, labels, agree, at) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", shadows),
            # sorted: replicas upserting the same rows lock them in one order (no deadlock)
            ("INSERT INTO answer_counts (experiment, arm, assigned_arm, labels, n) VALUES (?, ?, ?, ?, ?) "
             "ON CONFLICT (experiment, arm, assigned_arm, labels) DO UPDATE SET n = answer_counts.n + excluded.n",
             [(*k, n) for k, n in sorted(counts.items())]),
            ("INSERT INTO confidence_moments (experiment, arm, n, total, total_sq) VALUES (?, ?, ?, ?, ?) "
             "ON CONFLICT (experiment, arm) DO UPDATE SET n = confidence_moments.n + excluded.n, "
             "total = confidence_moments.total + excluded.total, "
             "total_sq = confidence_moments.total_sq + excluded.total_sq",
             [(*k, *m) for k, m in sorted(moments.items())]),
        ]
        await self._run([(sql, rows) for sql, rows in statements if rows])

    async def count_answers(self, experiment: str) -> int:
        return int((await self._query("SELECT COUNT(*) FROM answers WHERE experiment = ?", [experiment]))[0][0])

    async def exposure(self, experiment: str, arm: str, since: float = 0.0) -> tuple[int, int]:
        """(answers, distinct sticky keys) that ``arm`` served since ``since`` (Unix time): who saw it."""
        rows = await self._query("SELECT COUNT(*), COUNT(DISTINCT key_hash) FROM answers "
                                 "WHERE experiment = ? AND arm = ? AND at >= ?", [experiment, arm, since])
        return int(rows[0][0]), int(rows[0][1])

    async def answer_ids(self, experiment: str) -> set[str]:
        return {r[0] for r in await self._query("SELECT request_id FROM answers WHERE experiment = ?", [experiment])}

    # -- feedback -------------------------------------------------------------------------------------------

    async def find_answer(self, experiment: str, request_id: str) -> tuple[str, tuple[str, ...]] | None:
        """(arm, predicted labels) of the newest answer with this request id, or None."""
        rows = await self._query("SELECT arm, labels FROM answers WHERE experiment = ? AND request_id = ? "
                                 "ORDER BY id DESC LIMIT 1", [experiment, request_id])
        return (rows[0][0], _labels(rows[0][1])) if rows else None

    async def add_feedback(self, experiment: str, request_id: str, arm: str, labels: tuple[str, ...],
                           correct: bool) -> None:
        """Record feedback once per request id; raises ``DuplicateFeedback`` the second time."""
        try:
            await self._run([("INSERT INTO feedback (experiment, request_id, arm, labels, correct, at) "
                              "VALUES (?, ?, ?, ?, ?, ?)",
                              [(experiment, request_id, arm, LABEL_SEP.join(labels), int(correct), time.time())])])
        except self._unique_violation:
            raise DuplicateFeedback(request_id) from None

    # -- the report's data ----------------------------------------------------------------------------------

    async def snapshot(self, experiment: str, latency_window: int) -> dict[str, dict[str, ArmRecord]]:
        """The per-arm data ``build_report`` consumes, over all replicas' traffic.

        Counts, labels, errors, fallbacks, feedback and shadow agreement are aggregated in SQL over every
        row (answers through ``answer_counts``, which each batch updates); latency arrays are the newest
        ``latency_window`` answers per arm (the in-memory window's rule).
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
        for name, r in arms.items():
            r.latency = await self._latencies("answers", "arm", experiment, name, latency_window)
        for name, r in shadow.items():
            r.latency = await self._latencies("shadows", "shadow", experiment, name, latency_window)
        return {"arms": arms, "shadow": shadow}

    async def _latencies(self, table: str, column: str, experiment: str, name: str, limit: int) -> np.ndarray:
        rows = await self._query(f"SELECT latency_s FROM {table} WHERE experiment = ? AND {column} = ? "
                                 f"AND latency_s IS NOT NULL ORDER BY id DESC LIMIT ?", [experiment, name, limit])
        return np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))


def _labels(text: str | None) -> tuple[str, ...]:
    return tuple(text.split(LABEL_SEP)) if text else ()


def _revision(row: tuple) -> Revision:
    experiment, revision, spec, source, who, why, at = row
    return Revision(experiment, int(revision), json.loads(spec), source, who, why, float(at))


__all__ = ["AnswerRow", "DuplicateFeedback", "ErrorRow", "Record", "Revision", "ShadowRow", "Store",
           "StoreError", "StoreUnavailable", "key_hash"]
