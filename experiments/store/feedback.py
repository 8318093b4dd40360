"""Feedback through the store: never lost, whichever replica gets it and whenever it comes.

Feedback always enters ``pending_feedback`` first, once per request id (a second copy, pending or joined, is
refused). ``join`` then moves every pending row whose answer is in the store into ``feedback``, on the
answer's arm, assigned arm, period and unit (the newest answer of that id), adds it to the unit's
``feedback_n`` / ``feedback_correct`` and deletes the pending row. It runs in the transaction that records
feedback, and in a transaction right after each one that stores answers; both hold the store's
per-experiment lock (``Store._lock_statements``) from their start. So when feedback's join misses an
answer being stored, the answers' join waits for the feedback to commit and then sees it: feedback that
arrived before its answer lands as soon as the answer does. The answer batches themselves take no lock, so
replicas write them side by side. Rows still pending after ``RouterConfig.feedback_pending_s`` are deleted
by ``expire`` and counted in ``expired_feedback``.

"Correct" is the answer's predicted labels starting with the feedback's labels (``predicted[:n] == labels``),
computed in SQL on the ``LABEL_SEP``-joined texts.
"""

from __future__ import annotations

from experiments.store.batch import UNIT_SUMS, Statement
from experiments.store.records import LABEL_SEP

_FEEDBACK_SUMS = ", ".join(["0"] * (len(UNIT_SUMS) - 2))
"""Zeros for every ``unit_stats`` sum before ``feedback_n, feedback_correct`` (the last two)."""
assert UNIT_SUMS[-2:] == ("feedback_n", "feedback_correct")

ADD_PENDING = ("INSERT INTO pending_feedback (experiment, request_id, labels, at) SELECT ?, ?, ?, ? "
               "WHERE NOT EXISTS (SELECT 1 FROM feedback WHERE experiment = ? AND request_id = ?) "
               "ON CONFLICT (experiment, request_id) DO NOTHING")
"""Keep one feedback; inserts nothing (row count 0) when the request id already has feedback, pending or joined."""

_JOIN_INSERT = (
    "INSERT INTO feedback (experiment, request_id, arm, assigned_arm, period, unit, labels, correct, at) "
    "SELECT p.experiment, p.request_id, a.arm, a.assigned_arm, a.period, a.unit, p.labels, "
    "CASE WHEN a.labels = p.labels OR substr(a.labels, 1, length(p.labels) + 1) = p.labels || ? THEN 1 ELSE 0 END, "
    "p.at FROM pending_feedback p JOIN answers a ON a.id = (SELECT MAX(b.id) FROM answers b "
    "WHERE b.experiment = p.experiment AND b.request_id = p.request_id) "
    "WHERE p.experiment = ? ON CONFLICT (experiment, request_id) DO NOTHING")
_JOIN_UNITS = (
    f"INSERT INTO unit_stats (experiment, arm, assigned_arm, period, unit, {', '.join(UNIT_SUMS)}) "
    f"SELECT f.experiment, f.arm, f.assigned_arm, f.period, f.unit, {_FEEDBACK_SUMS}, COUNT(*), SUM(f.correct) "
    "FROM feedback f WHERE f.experiment = ? AND f.request_id IN (SELECT request_id FROM pending_feedback "
    "WHERE experiment = ?) AND f.period IS NOT NULL AND f.unit IS NOT NULL "
    "GROUP BY f.experiment, f.arm, f.assigned_arm, f.period, f.unit "
    "ORDER BY f.experiment, f.arm, f.assigned_arm, f.period, f.unit "
    "ON CONFLICT (experiment, arm, assigned_arm, period, unit) DO UPDATE SET "
    "feedback_n = unit_stats.feedback_n + excluded.feedback_n, "
    "feedback_correct = unit_stats.feedback_correct + excluded.feedback_correct")
_JOIN_DELETE = ("DELETE FROM pending_feedback WHERE experiment = ? AND EXISTS (SELECT 1 FROM feedback f "
                "WHERE f.experiment = pending_feedback.experiment AND f.request_id = pending_feedback.request_id)")

_EXPIRE_COUNT = ("INSERT INTO expired_feedback (experiment, n) SELECT ?, COUNT(*) FROM pending_feedback "
                 "WHERE experiment = ? AND at < ? "
                 "ON CONFLICT (experiment) DO UPDATE SET n = expired_feedback.n + excluded.n")
_EXPIRE_DELETE = "DELETE FROM pending_feedback WHERE experiment = ? AND at < ?"


def join(experiment: str) -> list[Statement]:
    """Move ``experiment``'s pending feedback whose answer is in the store onto that answer (see above)."""
    return [(_JOIN_INSERT, [(LABEL_SEP, experiment)]), (_JOIN_UNITS, [(experiment, experiment)]),
            (_JOIN_DELETE, [(experiment,)])]


def add(experiment: str, request_id: str, labels: tuple[str, ...], at: float) -> list[Statement]:
    """Keep this feedback pending (``ADD_PENDING``: its row count says whether it was new), then join."""
    return [(ADD_PENDING, [(experiment, request_id, LABEL_SEP.join(labels), at, experiment, request_id)]),
            *join(experiment)]


def expire(experiment: str, older_than: float) -> list[Statement]:
    """Count, then delete, the pending feedback received before ``older_than`` (Unix time); the last
    statement's row count is how many expired."""
    return [(_EXPIRE_COUNT, [(experiment, experiment, older_than)]), (_EXPIRE_DELETE, [(experiment, older_than)])]
