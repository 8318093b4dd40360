"""The store's versioned schema: ordered migration steps, applied once each, recorded in ``schema_version``.

A step is a list of statements in SQL that SQLite and PostgreSQL both accept; ``{id}`` is the
back-end's auto-incrementing primary key (``INTEGER PRIMARY KEY AUTOINCREMENT`` /
``BIGSERIAL PRIMARY KEY``). Never edit a released step: add a new one at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from experiments.generation import GENERATION_FIELDS

_UNIT_ROW = ("experiment TEXT NOT NULL, arm TEXT NOT NULL, assigned_arm TEXT NOT NULL, period INTEGER NOT NULL, "
             "unit TEXT NOT NULL")
"""The key columns of a unit-table row (``unit_stats``): one (arm, assigned arm, period, unit) of an experiment."""

SCHEMA_VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                        "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")


@dataclass(frozen=True)
class Migration:
    """One schema step: its version number, what it does, and its statements."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "experiment revisions: the spec, weights and the audit log (who, when, why)", (
        "CREATE TABLE revisions (id {id}, experiment TEXT NOT NULL, revision INTEGER NOT NULL, spec TEXT NOT NULL, "
        "source TEXT NOT NULL, who TEXT NOT NULL, why TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, "
        "UNIQUE (experiment, revision))",
    )),
    Migration(2, "answers, errors, shadow copies and feedback", (
        "CREATE TABLE answers (id {id}, experiment TEXT NOT NULL, request_id TEXT NOT NULL, arm TEXT NOT NULL, "
        "assigned_arm TEXT NOT NULL, version TEXT NOT NULL, key_hash TEXT, latency_s DOUBLE PRECISION NOT NULL, "
        "labels TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX answers_by_arm ON answers (experiment, arm, id)",
        "CREATE INDEX answers_by_request ON answers (experiment, request_id)",
        "CREATE TABLE errors (id {id}, experiment TEXT NOT NULL, arm TEXT NOT NULL, code TEXT NOT NULL, "
        "kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX errors_by_arm ON errors (experiment, arm)",
        "CREATE TABLE shadows (id {id}, experiment TEXT NOT NULL, shadow TEXT NOT NULL, primary_arm TEXT NOT NULL, "
        "outcome TEXT NOT NULL, latency_s DOUBLE PRECISION, labels TEXT NOT NULL, agree INTEGER, "
        "at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX shadows_by_name ON shadows (experiment, shadow, id)",
        "CREATE TABLE feedback (experiment TEXT NOT NULL, request_id TEXT NOT NULL, arm TEXT NOT NULL, "
        "labels TEXT NOT NULL, correct INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL, "
        "PRIMARY KEY (experiment, request_id))",
    )),
    Migration(3, "answer counts per (arm, assigned arm, labels), kept by the writer: the report reads O(groups)", (
        "CREATE TABLE answer_counts (experiment TEXT NOT NULL, arm TEXT NOT NULL, assigned_arm TEXT NOT NULL, "
        "labels TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (experiment, arm, assigned_arm, labels))",
        "INSERT INTO answer_counts SELECT experiment, arm, assigned_arm, labels, COUNT(*) FROM answers "
        "GROUP BY experiment, arm, assigned_arm, labels",
    )),
    Migration(4, "the top-class probability of each answer, and its moments per arm (the judge's mean confidence)", (
        "ALTER TABLE answers ADD COLUMN confidence DOUBLE PRECISION",
        "CREATE TABLE confidence_moments (experiment TEXT NOT NULL, arm TEXT NOT NULL, n BIGINT NOT NULL, "
        "total DOUBLE PRECISION NOT NULL, total_sq DOUBLE PRECISION NOT NULL, PRIMARY KEY (experiment, arm))",
    )),
    Migration(5, "units and periods: per-unit sums, label and latency-bucket counts (kept by the writer), the unit "
                 "and period of answers, errors and feedback; pending and expired feedback", (
        "ALTER TABLE answers ADD COLUMN unit TEXT",
        "ALTER TABLE answers ADD COLUMN period INTEGER",
        "ALTER TABLE errors ADD COLUMN assigned_arm TEXT",
        "ALTER TABLE errors ADD COLUMN unit TEXT",
        "ALTER TABLE errors ADD COLUMN period INTEGER",
        "ALTER TABLE feedback ADD COLUMN assigned_arm TEXT",
        "ALTER TABLE feedback ADD COLUMN period INTEGER",
        "ALTER TABLE feedback ADD COLUMN unit TEXT",
        f"CREATE TABLE unit_stats (id {{id}}, {_UNIT_ROW}, requests BIGINT NOT NULL, server_errors BIGINT NOT NULL, "
        "answered BIGINT NOT NULL, latency_sum DOUBLE PRECISION NOT NULL, latency_sq DOUBLE PRECISION NOT NULL, "
        "predictions BIGINT NOT NULL, confidence_n BIGINT NOT NULL, confidence_sum DOUBLE PRECISION NOT NULL, "
        "confidence_sq DOUBLE PRECISION NOT NULL, feedback_n BIGINT NOT NULL, feedback_correct BIGINT NOT NULL, "
        "UNIQUE (experiment, arm, assigned_arm, period, unit))",
        # a unit row's label and latency-bucket counts point at its id: the unit table reads them as two ints each
        "CREATE TABLE unit_labels (experiment TEXT NOT NULL, row_id BIGINT NOT NULL, label TEXT NOT NULL, "
        "n BIGINT NOT NULL, PRIMARY KEY (experiment, row_id, label))",
        "CREATE TABLE unit_latency (experiment TEXT NOT NULL, row_id BIGINT NOT NULL, bucket INTEGER NOT NULL, "
        "n BIGINT NOT NULL, PRIMARY KEY (experiment, row_id, bucket))",
        # covering: the tail count above a bucket reads only the index entries above it
        "CREATE INDEX unit_latency_tail ON unit_latency (experiment, bucket, row_id, n)",
        "CREATE TABLE pending_feedback (experiment TEXT NOT NULL, request_id TEXT NOT NULL, labels TEXT NOT NULL, "
        "at DOUBLE PRECISION NOT NULL, PRIMARY KEY (experiment, request_id))",
        "CREATE INDEX pending_feedback_by_age ON pending_feedback (experiment, at)",
        "CREATE TABLE expired_feedback (experiment TEXT NOT NULL PRIMARY KEY, n BIGINT NOT NULL)",
    )),
    Migration(6, "drift: each arm's newest monitored texts (features) and the reference each is compared with", (
        "CREATE TABLE drift_references (experiment TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, "
        "reference TEXT NOT NULL, PRIMARY KEY (experiment, model, version))",
        "CREATE TABLE drift_samples (id {id}, experiment TEXT NOT NULL, arm TEXT NOT NULL, model TEXT NOT NULL, "
        "version TEXT NOT NULL, text_length DOUBLE PRECISION NOT NULL, unknown_token_rate DOUBLE PRECISION NOT NULL, "
        "confidence DOUBLE PRECISION, label TEXT, at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX drift_samples_by_arm ON drift_samples (experiment, arm, id)",
    )),
    Migration(7, "the judge's history of looks: its verdicts at past moments, for the live page", (
        "CREATE TABLE judge_looks (id {id}, experiment TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, "
        "look TEXT NOT NULL)",
        "CREATE INDEX judge_looks_by_experiment ON judge_looks (experiment, id)",
    )),
    Migration(8, "the loop: kept input texts (opt-in, deleted after their retention), the loop's steps (its audit "
                 "log) and its lease", (
        "CREATE TABLE kept_inputs (experiment TEXT NOT NULL, request_id TEXT NOT NULL, arm TEXT NOT NULL, "
        "texts TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (experiment, request_id))",
        "CREATE INDEX kept_inputs_by_age ON kept_inputs (experiment, at)",
        "CREATE TABLE loop_steps (id {id}, loop TEXT NOT NULL, cycle INTEGER NOT NULL, step TEXT NOT NULL, "
        "trigger TEXT NOT NULL, output TEXT NOT NULL, who TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, "
        "UNIQUE (loop, cycle, step))",
        "CREATE TABLE loop_leases (loop TEXT NOT NULL PRIMARY KEY, holder TEXT NOT NULL, "
        "expires_at DOUBLE PRECISION NOT NULL)",
    )),
    Migration(9, "generative answers: per-unit stream sums (TTFT, gaps, tokens, seconds, quality), the answers' texts "
                 "while feedback may score them, and quality feedback", (
        *(f"ALTER TABLE unit_stats ADD COLUMN {name} DOUBLE PRECISION NOT NULL DEFAULT 0" for name in GENERATION_FIELDS),
        "CREATE TABLE answer_texts (experiment TEXT NOT NULL, request_id TEXT NOT NULL, text TEXT NOT NULL, "
        "at DOUBLE PRECISION NOT NULL, PRIMARY KEY (experiment, request_id))",
        "CREATE INDEX answer_texts_by_age ON answer_texts (experiment, at)",
        "CREATE TABLE quality_feedback (experiment TEXT NOT NULL, request_id TEXT NOT NULL, arm TEXT NOT NULL, "
        "assigned_arm TEXT NOT NULL, period INTEGER, unit TEXT, score DOUBLE PRECISION NOT NULL, "
        "at DOUBLE PRECISION NOT NULL, PRIMARY KEY (experiment, request_id))",
    )),
    Migration(10, "quality feedback that waits for its answer: a rating's score, or a reference text until the "
                  "answer's text arrives to score it against", (
        "CREATE TABLE pending_quality (experiment TEXT NOT NULL, request_id TEXT NOT NULL, score DOUBLE PRECISION, "
        "reference TEXT, at DOUBLE PRECISION NOT NULL, PRIMARY KEY (experiment, request_id))",
        "CREATE INDEX pending_quality_by_age ON pending_quality (experiment, at)",
    )),
)


def statements(migration: Migration, id_column: str) -> list[str]:
    """The step's statements for a back-end whose auto-increment primary key is ``id_column``."""
    return [s.replace("{id}", id_column) for s in migration.statements]


def pending(current: int) -> list[Migration]:
    """The steps after ``current``, in order."""
    return [m for m in MIGRATIONS if m.version > current]
