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

Quality feedback on a generative answer takes the same way through ``pending_quality``, once per request id:
a score in [0, 1] (a rating, or a reference text the router scored against the answer's text), or a reference
text alone when the answer's text is not in the store yet. ``unscored`` finds the pending references whose
answer's text has arrived; the store scores them (``experiments.generation.reference_score``, outside SQL) and
``score`` fills them in; ``join_quality`` then moves every scored row whose answer is in the store into
``quality_feedback`` and its unit's ``quality_*`` sums. Pending quality feedback expires with the label
feedback, into the same count. The answers' texts kept for scoring (``answer_texts``) are deleted with the
expired feedback: after ``feedback_pending_s``.
"""

from __future__ import annotations

from experiments.generation import GENERATION_FIELDS
from experiments.store.batch import STATS_SUMS, UNIT_KEY, UNIT_SUMS, Statement
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

ADD_PENDING_QUALITY = ("INSERT INTO pending_quality (experiment, request_id, score, reference, at) SELECT ?, ?, ?, ?, ? "
                       "WHERE NOT EXISTS (SELECT 1 FROM quality_feedback WHERE experiment = ? AND request_id = ?) "
                       "ON CONFLICT (experiment, request_id) DO NOTHING")
"""Keep one quality feedback; inserts nothing (row count 0) when the id already has one, pending or joined."""
UNSCORED = ("SELECT p.request_id, p.reference, t.text FROM pending_quality p JOIN answer_texts t "
            "ON t.experiment = p.experiment AND t.request_id = p.request_id WHERE p.experiment = ? AND p.score IS NULL")
"""The pending references whose answer's text is in the store: (request id, reference, text)."""
_SCORE = "UPDATE pending_quality SET score = ? WHERE experiment = ? AND request_id = ? AND score IS NULL"
_JOIN_QUALITY_INSERT = (
    "INSERT INTO quality_feedback (experiment, request_id, arm, assigned_arm, period, unit, score, at) "
    "SELECT p.experiment, p.request_id, a.arm, a.assigned_arm, a.period, a.unit, p.score, p.at FROM pending_quality p "
    "JOIN answers a ON a.id = (SELECT MAX(b.id) FROM answers b WHERE b.experiment = p.experiment "
    "AND b.request_id = p.request_id) WHERE p.experiment = ? AND p.score IS NOT NULL "
    "ON CONFLICT (experiment, request_id) DO NOTHING")
_QUALITY_SUMS = ", ".join(["0"] * (len(STATS_SUMS) - 3) + ["COUNT(*)", "SUM(q.score)", "SUM(q.score * q.score)"])
assert GENERATION_FIELDS[-3:] == ("quality_n", "quality_sum", "quality_sq")
_JOIN_QUALITY_UNITS = (
    f"INSERT INTO unit_stats ({UNIT_KEY}, {', '.join(STATS_SUMS)}) "
    f"SELECT q.experiment, q.arm, q.assigned_arm, q.period, q.unit, {_QUALITY_SUMS} FROM quality_feedback q "
    "WHERE q.experiment = ? AND q.request_id IN (SELECT request_id FROM pending_quality WHERE experiment = ?) "
    "AND q.period IS NOT NULL AND q.unit IS NOT NULL GROUP BY q.experiment, q.arm, q.assigned_arm, q.period, q.unit "
    "ORDER BY q.experiment, q.arm, q.assigned_arm, q.period, q.unit "
    f"ON CONFLICT ({UNIT_KEY}) DO UPDATE SET quality_n = unit_stats.quality_n + excluded.quality_n, "
    "quality_sum = unit_stats.quality_sum + excluded.quality_sum, "
    "quality_sq = unit_stats.quality_sq + excluded.quality_sq")
"""The joined rows' units' quality sums (the rows still in ``pending_quality``: joined by this transaction)."""
_JOIN_QUALITY_DELETE = ("DELETE FROM pending_quality WHERE experiment = ? AND EXISTS (SELECT 1 FROM quality_feedback q "
                        "WHERE q.experiment = pending_quality.experiment AND q.request_id = pending_quality.request_id)")
_EXPIRE_TEXTS = "DELETE FROM answer_texts WHERE experiment = ? AND at < ?"

_EXPIRE_COUNT = ("INSERT INTO expired_feedback (experiment, n) SELECT ?, "
                 "(SELECT COUNT(*) FROM pending_feedback WHERE experiment = ? AND at < ?) + "
                 "(SELECT COUNT(*) FROM pending_quality WHERE experiment = ? AND at < ?) "
                 "ON CONFLICT (experiment) DO UPDATE SET n = expired_feedback.n + excluded.n")
_EXPIRE_DELETE = "DELETE FROM pending_feedback WHERE experiment = ? AND at < ?"
_EXPIRE_DELETE_QUALITY = "DELETE FROM pending_quality WHERE experiment = ? AND at < ?"


def join(experiment: str) -> list[Statement]:
    """Move ``experiment``'s pending feedback whose answer is in the store onto that answer (see above)."""
    return [(_JOIN_INSERT, [(LABEL_SEP, experiment)]), (_JOIN_UNITS, [(experiment, experiment)]),
            (_JOIN_DELETE, [(experiment,)])]


def add(experiment: str, request_id: str, labels: tuple[str, ...], at: float) -> list[Statement]:
    """Keep this feedback pending (``ADD_PENDING``: its row count says whether it was new), then join."""
    return [(ADD_PENDING, [(experiment, request_id, LABEL_SEP.join(labels), at, experiment, request_id)]),
            *join(experiment)]


def add_quality(experiment: str, request_id: str, score: float | None, reference: str | None,
                at: float) -> list[Statement]:
    """Keep this quality feedback pending (``ADD_PENDING_QUALITY``: its row count says whether it was new), then
    join: a ``score`` joins at once when its answer is in the store; a ``reference`` alone waits to be scored."""
    return [(ADD_PENDING_QUALITY, [(experiment, request_id, score, reference, at, experiment, request_id)]),
            *join_quality(experiment)]


def score(experiment: str, scores: list[tuple[str, float]]) -> list[Statement]:
    """Fill in the scores of pending references (``(request id, score)``; a row scored meanwhile keeps its own)."""
    return [(_SCORE, [(s, experiment, request_id) for request_id, s in scores])] if scores else []


def join_quality(experiment: str) -> list[Statement]:
    """Move ``experiment``'s scored pending quality feedback whose answer is in the store onto that answer."""
    return [(_JOIN_QUALITY_INSERT, [(experiment,)]), (_JOIN_QUALITY_UNITS, [(experiment, experiment)]),
            (_JOIN_QUALITY_DELETE, [(experiment,)])]


def expire(experiment: str, older_than: float) -> list[Statement]:
    """Delete the answers' texts kept before ``older_than`` (Unix time), then count and delete the pending
    feedback (labels and quality) received before it; the last two statements' row counts add up to how many
    expired."""
    return [(_EXPIRE_TEXTS, [(experiment, older_than)]),
            (_EXPIRE_COUNT, [(experiment, experiment, older_than, experiment, older_than)]),
            (_EXPIRE_DELETE, [(experiment, older_than)]), (_EXPIRE_DELETE_QUALITY, [(experiment, older_than)])]
