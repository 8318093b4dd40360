"""One batch of records as the statements of one transaction: raw rows, and the aggregates kept beside them.

Each batch is summed in Python first (per arm, per unit, per label, per latency bucket), so a transaction
upserts one row per group however many answers it carries; every upsert is sorted by its key, so replicas
writing the same rows lock them in one order and never deadlock. The statements are SQL that SQLite and
PostgreSQL both accept (``?`` placeholders); ``Store.write_batch`` runs them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from experiments.generation import GENERATION_FIELDS, sample_sums
from experiments.judge.units import LATENCY_CAP_MS, latency_bucket
from experiments.store.records import (
    LABEL_SEP,
    AnswerRow,
    DriftReferenceRow,
    DriftSample,
    ErrorRow,
    InputRow,
    Record,
    ShadowRow,
)

Statement = tuple[str, Sequence[Sequence[Any]]]
UnitKey = tuple[str, str, str, int, str]
"""(experiment, arm, assigned arm, period, unit): one row of the unit tables."""

UNIT_SUMS = ("requests", "server_errors", "answered", "latency_sum", "latency_sq", "predictions", "confidence_n",
             "confidence_sum", "confidence_sq", "feedback_n", "feedback_correct")
"""The summed columns of ``unit_stats`` every experiment has, in order."""
STATS_SUMS = UNIT_SUMS + GENERATION_FIELDS
"""Every summed column of ``unit_stats``: a generative experiment's stream sums after the common ones."""
UNIT_KEY = "experiment, arm, assigned_arm, period, unit"

UPSERT_UNIT_STATS = (
    f"INSERT INTO unit_stats ({UNIT_KEY}, {', '.join(STATS_SUMS)}) VALUES ({', '.join('?' * (5 + len(STATS_SUMS)))}) "
    f"ON CONFLICT ({UNIT_KEY}) DO UPDATE SET " + ", ".join(f"{c} = unit_stats.{c} + excluded.{c}" for c in STATS_SUMS))
_ROW_ID = "SELECT ?, id, ?, ? FROM unit_stats WHERE experiment = ? AND arm = ? AND assigned_arm = ? AND period = ? AND unit = ?"
"""A count (label or bucket, n) for the ``unit_stats`` row of a key: the row the same batch upserted first."""
_UPSERT_UNIT_LABELS = (f"INSERT INTO unit_labels (experiment, row_id, label, n) {_ROW_ID} "
                       "ON CONFLICT (experiment, row_id, label) DO UPDATE SET n = unit_labels.n + excluded.n")
_UPSERT_UNIT_LATENCY = (f"INSERT INTO unit_latency (experiment, row_id, bucket, n) {_ROW_ID} "
                        "ON CONFLICT (experiment, row_id, bucket) DO UPDATE SET n = unit_latency.n + excluded.n")
_INSERT_ANSWERS = ("INSERT INTO answers (experiment, request_id, arm, assigned_arm, version, key_hash, latency_s, labels, "
                   "at, confidence, unit, period) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_TEXTS = ("INSERT INTO answer_texts (experiment, request_id, text, at) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (experiment, request_id) DO NOTHING")
_INSERT_ERRORS = ("INSERT INTO errors (experiment, arm, code, kind, at, assigned_arm, unit, period) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_SHADOWS = ("INSERT INTO shadows (experiment, shadow, primary_arm, outcome, latency_s, labels, agree, at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_UPSERT_ANSWER_COUNTS = ("INSERT INTO answer_counts (experiment, arm, assigned_arm, labels, n) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (experiment, arm, assigned_arm, labels) DO UPDATE SET n = answer_counts.n + excluded.n")
_UPSERT_MOMENTS = ("INSERT INTO confidence_moments (experiment, arm, n, total, total_sq) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (experiment, arm) DO UPDATE SET n = confidence_moments.n + excluded.n, "
                   "total = confidence_moments.total + excluded.total, "
                   "total_sq = confidence_moments.total_sq + excluded.total_sq")
_INSERT_DRIFT = ("INSERT INTO drift_samples (experiment, arm, model, version, text_length, unknown_token_rate, confidence, "
                 "label, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_PRUNE_DRIFT = ("DELETE FROM drift_samples WHERE experiment = ? AND arm = ? AND id < (SELECT id FROM drift_samples "
                "WHERE experiment = ? AND arm = ? ORDER BY id DESC LIMIT 1 OFFSET ?)")
_INSERT_INPUTS = ("INSERT INTO kept_inputs (experiment, request_id, arm, texts, at) VALUES (?, ?, ?, ?, ?) "
                  "ON CONFLICT (experiment, request_id) DO NOTHING")
_UPSERT_REFERENCE = ("INSERT INTO drift_references (experiment, model, version, reference) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (experiment, model, version) DO UPDATE SET reference = excluded.reference")


def _sums(table: dict[UnitKey, list], key: UnitKey) -> list:
    sums = table.get(key)
    if sums is None:
        sums = table[key] = [0, 0, 0, 0.0, 0.0, 0, 0, 0.0, 0.0, 0, 0] + [0.0] * len(GENERATION_FIELDS)
    return sums


def unit_aggregates(answers: Sequence[AnswerRow], units: Sequence[str], errors: Sequence[ErrorRow]
                    ) -> tuple[dict[UnitKey, list], Counter, Counter]:
    """Per unit-table row of a batch: the ``UNIT_SUMS``, the label counts and the latency-bucket counts (keys:
    the row's key plus the label or bucket). ``units``: each answer's unit. Answers and final server errors
    with a period count; the rest do not."""
    sums: dict[UnitKey, list] = {}
    labels: Counter = Counter()
    buckets: Counter = Counter()
    for r, unit in zip(answers, units, strict=True):
        if r.period is None:
            continue
        key = (r.experiment, r.arm, r.assigned_arm, r.period, unit)
        s = _sums(sums, key)
        ms = r.latency_s * 1000.0
        clipped = min(ms, LATENCY_CAP_MS)
        s[0] += 1
        s[2] += 1
        s[3] += clipped
        s[4] += clipped * clipped
        s[5] += len(r.labels)
        if r.confidences:
            s[6] += len(r.confidences)
            s[7] += sum(r.confidences)
            s[8] += sum(c * c for c in r.confidences)
        if r.generation is not None:
            for i, x in enumerate(sample_sums(r.generation), start=len(UNIT_SUMS)):
                s[i] += x
        for label in r.labels:
            labels[(*key, label)] += 1
        buckets[(*key, latency_bucket(ms))] += 1
    for r in errors:
        if (unit := r.unit) is not None:
            s = _sums(sums, (r.experiment, r.arm, r.assigned_arm, r.period, unit))
            s[0] += 1
            s[1] += 1
    return sums, labels, buckets


def _per_arm(answers: list[AnswerRow]) -> tuple[Counter, dict[tuple[str, str], list]]:
    """The per-arm aggregates the snapshot reads: answer counts by (arm, assigned arm, labels), confidence moments."""
    counts = Counter((r.experiment, r.arm, r.assigned_arm, LABEL_SEP.join(r.labels)) for r in answers)
    moments: dict[tuple[str, str], list] = {}
    for r in answers:
        if r.confidences:
            m = moments.setdefault((r.experiment, r.arm), [0, 0.0, 0.0])
            m[0] += len(r.confidences)
            m[1] += sum(r.confidences)
            m[2] += sum(x * x for x in r.confidences)
    return counts, moments


def _drift(records: Sequence[Record]) -> list[Statement]:
    samples = [r for r in records if isinstance(r, DriftSample)]
    references = {(r.experiment, r.model, r.version): r.reference for r in records if isinstance(r, DriftReferenceRow)}
    windows: dict[tuple[str, str], int] = {}
    for r in samples:
        windows[(r.experiment, r.arm)] = max(windows.get((r.experiment, r.arm), 0), r.window)
    return [
        (_UPSERT_REFERENCE, [(*k, ref) for k, ref in sorted(references.items())]),
        (_INSERT_DRIFT, [(r.experiment, r.arm, r.model, r.version, r.text_length, r.unknown_token_rate, r.confidence,
                          r.label, r.at) for r in samples]),
        (_PRUNE_DRIFT, [(e, a, e, a, w - 1) for (e, a), w in sorted(windows.items())]),
    ]


def batch_statements(records: Sequence[Record]) -> list[Statement]:
    """The statements that write ``records`` (raw rows and every aggregate), in order; empty ones left out."""
    answers = [r for r in records if isinstance(r, AnswerRow)]
    errors = [r for r in records if isinstance(r, ErrorRow)]
    shadows = [r for r in records if isinstance(r, ShadowRow)]
    units = [r.unit for r in answers]  # the key's hash for a keyed request: also its key_hash column
    counts, moments = _per_arm(answers)
    sums, labels, buckets = unit_aggregates(answers, units, errors)
    statements: list[Statement] = [
        (_INSERT_ANSWERS, [(r.experiment, r.request_id, r.arm, r.assigned_arm, r.version,
                            None if r.key is None else unit, r.latency_s, LABEL_SEP.join(r.labels), r.at,
                            sum(r.confidences) / len(r.confidences) if r.confidences else None,
                            None if r.period is None else unit, r.period)
                           for r, unit in zip(answers, units, strict=True)]),
        (_INSERT_TEXTS, [(r.experiment, r.request_id, r.text, r.at) for r in answers if r.text is not None]),
        (_INSERT_ERRORS, [(r.experiment, r.arm, r.code, r.kind, r.at, r.assigned_arm, r.unit, r.period)
                          for r in errors]),
        (_INSERT_SHADOWS, [(r.experiment, r.shadow, r.primary_arm, r.outcome, r.latency_s, LABEL_SEP.join(r.labels),
                            None if r.agree is None else int(r.agree), r.at) for r in shadows]),
        # sorted: replicas upserting the same rows lock them in one order (no deadlock)
        (_UPSERT_ANSWER_COUNTS, [(*k, n) for k, n in sorted(counts.items())]),
        (_UPSERT_MOMENTS, [(*k, *m) for k, m in sorted(moments.items())]),
        (UPSERT_UNIT_STATS, [(*k, *s) for k, s in sorted(sums.items())]),
        (_UPSERT_UNIT_LABELS, [(k[0], k[5], n, *k[:5]) for k, n in sorted(labels.items())]),
        (_UPSERT_UNIT_LATENCY, [(k[0], k[5], n, *k[:5]) for k, n in sorted(buckets.items())]),
        *_drift(records),
        (_INSERT_INPUTS, [(r.experiment, r.request_id, r.arm, json.dumps(list(r.texts), ensure_ascii=False), r.at)
                          for r in records if isinstance(r, InputRow)]),
    ]
    return [(sql, rows) for sql, rows in statements if rows]
