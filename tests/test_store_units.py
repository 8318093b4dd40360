"""The judge's unit table from the experiment store (``Store.unit_table``), on SQLite and a real PostgreSQL:
one row per (arm, assigned arm, period, unit), a fallback's assigned arm, unkeyed requests in pseudo-units,
feedback on its answer's period, the tail threshold and counts, and the same table from both back-ends."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from experiments.judge.units import (
    LATENCY_CAP_MS,
    PSEUDO_UNITS,
    UnitTable,
    latency_bucket,
    tail_threshold_ms,
    unit_id,
)
from experiments.spec import experiment_from_dict
from experiments.store import AnswerRow, ErrorRow, open_store
from experiments.store.sync import spec_of

EXP = "ab"
ARMS = ("control", "treatment")
SPEC = {"name": EXP, "sticky": {"header": "X-User-Id"}, "fallback": "control",
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 90},
                 {"name": "treatment", "model": "m", "version": "2", "weight": 10}]}
WEIGHTS = {1: (90, 10), 2: (50, 50), 3: (0, 100)}


def traffic(seed: int = 0, n: int = 3000) -> tuple[list, list[tuple[str, tuple[str, ...]]]]:
    """Answers over three periods from 60 keyed users (each in one arm) and unkeyed requests, a few fallbacks,
    final and intermediate server errors, client errors; and feedback for a third of the answers."""
    rng = random.Random(seed)
    records, feedback = [], []
    for i in range(n):
        period = 1 + i * 3 // n
        key = f"user-{rng.randrange(60)}" if rng.random() < 0.8 else None
        arm = ARMS[int(key[5:]) % 2] if key else rng.choice(ARMS)
        rid = f"r{i}"
        if rng.random() < 0.03:  # the final server error the caller got
            records.append(ErrorRow(EXP, arm, "503", 0.0, rid, key, arm, period))
            continue
        if rng.random() < 0.02:  # an attempt a fallback followed (not a request outcome), then control answers
            records.append(ErrorRow(EXP, arm, "504", 0.0))
            served = "control"
        else:
            served = arm
        if rng.random() < 0.02:
            records.append(ErrorRow(EXP, arm, "400", 0.0, rid, key, arm, period))  # the caller's: never counted
        labels = tuple(rng.choice(("POSITIVE", "NEGATIVE")) for _ in range(rng.choice((1, 1, 2))))
        latency = rng.lognormvariate(-5.0 + (0.2 if served == "treatment" else 0.0), 0.5)
        if rng.random() < 0.002:
            latency = 2.5  # beyond LATENCY_CAP_MS: clipped in the sums, not in the buckets
        confidences = tuple(rng.uniform(0.5, 1.0) for _ in labels)
        records.append(AnswerRow(EXP, rid, served, arm, "1", key, latency, labels, 0.0, confidences, period))
        if rng.random() < 1 / 3:
            feedback.append((rid, (rng.choice(("POSITIVE", "NEGATIVE")),)))
    return records, feedback


def expected_rows(records: list, feedback: list, threshold: float | None) -> dict[tuple, dict]:
    """The table computed straight from the records, row by row (the reference the store must match)."""
    rows: dict[tuple, Counter] = defaultdict(Counter)
    answers = {}
    tail_edge = None if threshold is None else latency_bucket(threshold)
    for r in records:
        if isinstance(r, ErrorRow):
            if r.request_id is not None and r.kind == "server":
                row = rows[(r.arm, r.assigned_arm, r.period, unit_id(r.key, r.request_id))]
                row["requests"] += 1
                row["server_errors"] += 1
            continue
        answers[r.request_id] = r
        row = rows[(r.arm, r.assigned_arm, r.period, unit_id(r.key, r.request_id))]
        ms = min(r.latency_s * 1000, LATENCY_CAP_MS)
        row.update(requests=1, answered=1, latency_sum=ms, latency_sq=ms * ms, predictions=len(r.labels),
                   confidence_n=len(r.confidences), confidence_sum=sum(r.confidences),
                   confidence_sq=sum(c * c for c in r.confidences))
        row.update(f"label:{x}" for x in r.labels)
        if tail_edge is not None and latency_bucket(r.latency_s * 1000) > tail_edge:
            row["tail"] += 1
    for rid, labels in feedback:
        a = answers[rid]
        row = rows[(a.arm, a.assigned_arm, a.period, unit_id(a.key, rid))]
        row["feedback_n"] += 1
        row["feedback_correct"] += a.labels[: len(labels)] == labels
    return {k: {c: v for c, v in row.items() if v} for k, row in rows.items()}


def table_rows(t: UnitTable, names: list[str]) -> dict[tuple, dict]:
    """The store's table as {(arm, assigned, period, unit id): {column: value}} (zeros left out)."""
    out = {}
    for i in range(t.rows):
        values = {f: getattr(t, f)[i] for f in UnitTable.ROW_FIELDS[5:]}
        values.update({f"label:{k}": v[i] for k, v in t.labels.items()})
        if t.tail is not None:
            values["tail"] = t.tail[i]
        out[(t.arms[t.arm[i]], t.arms[t.assigned[i]], int(t.period[i]), names[i])] = {
            k: v for k, v in values.items() if v}
    return out


def fill(url: str, records: list, feedback: list, quantile: float, needed: int) -> UnitTable:
    async def go() -> UnitTable:
        async with open_store(url) as store:
            exp = experiment_from_dict(SPEC)
            for rev, (c, t) in WEIGHTS.items():
                await store.add_revision(EXP, spec_of(exp.with_weights({"control": c, "treatment": t})), "admin",
                                         "test", f"period {rev}")
            half = len(feedback) // 2
            for rid, labels in feedback[:half]:  # before their answers: kept pending, joined by the batches
                assert await store.add_feedback(EXP, rid, labels) is None
            for lo in range(0, len(records), 500):
                await store.write_batch(records[lo:lo + 500])
            for rid, labels in feedback[half:]:  # after: joined at once
                assert await store.add_feedback(EXP, rid, labels) is not None
            return await store.unit_table(EXP, ARMS, quantile, needed)
    return asyncio.run(go())


@pytest.fixture(scope="module")
def data():
    return traffic()


def test_unit_table_has_one_row_per_arm_assigned_arm_period_and_unit(store_url, data):
    records, feedback = data
    t = fill(store_url, records, feedback, 0.99, 200)
    control_first = [r.latency_s * 1000 for r in records if isinstance(r, AnswerRow) and r.arm == "control"][:200]
    threshold = tail_threshold_ms(control_first, 0.99, 200)
    assert t.tail_threshold_ms == threshold is not None
    unit_names = sorted({k[3] for k in expected_rows(records, feedback, threshold)})
    names = [unit_names[u] for u in t.unit]  # equal ints are the same unit: np.unique over the unit ids
    got, want = table_rows(t, names), expected_rows(records, feedback, threshold)
    assert set(got) == set(want)
    for key, row in want.items():
        assert set(got[key]) == set(row), key
        for column, value in row.items():
            assert got[key][column] == pytest.approx(value, rel=1e-9), (key, column)

    assert t.periods == {1: {"control": 90, "treatment": 10}, 2: {"control": 50, "treatment": 50},
                         3: {"control": 0, "treatment": 100}}
    # a fallback: served by control, assigned to treatment, in its own rows
    fallbacks = t.arm != t.assigned
    assert fallbacks.any() and set(t.arm[fallbacks]) == {0} and set(t.assigned[fallbacks]) == {1}
    # unkeyed requests are summed into at most PSEUDO_UNITS pseudo-units per (arm, period); keys are units
    pseudo = [n for n in names if n.startswith("~")]
    assert pseudo and len(set(pseudo)) <= PSEUDO_UNITS * 2 * 3 and not t.keyed[[n.startswith("~") for n in names]].any()
    assert t.keyed[[not n.startswith("~") for n in names]].all()
    keyed_users = {unit_id(f"user-{i}", "") for i in range(60)}
    assert {n for n in names if not n.startswith("~")} <= keyed_users
    # every request counted once: answers plus final server errors, client errors and attempts left out
    outcomes = [r for r in records if isinstance(r, AnswerRow) or (r.request_id and r.kind == "server")]
    assert t.requests.sum() == len(outcomes) and t.feedback_n.sum() == len(feedback)
    assert (t.requests == t.answered + t.server_errors).all()


def test_feedback_lands_on_its_answers_period(store_url):
    """A unit served in periods 1 and 2: feedback for its period-1 answer, sent during period 2 and before the
    answer reached the store, counts in period 1."""
    rows = [AnswerRow(EXP, "early", "treatment", "treatment", "2", "u1", 0.01, ("POSITIVE",), 0.0, (), 1),
            AnswerRow(EXP, "later", "treatment", "treatment", "2", "u1", 0.01, ("POSITIVE",), 0.0, (), 2)]
    t = fill(store_url, rows, [("early", ("POSITIVE",))], 0.99, 10)
    by_period = {int(p): (int(n), int(c)) for p, n, c in zip(t.period, t.feedback_n, t.feedback_correct, strict=True)}
    assert by_period == {1: (1, 1), 2: (0, 0)} and t.tail is None and t.tail_threshold_ms is None
    assert len(set(t.unit.tolist())) == 1 and t.keyed.all()


def test_sqlite_and_postgres_give_the_same_table(tmp_path, postgres_url, data):
    records, feedback = data
    tables = [fill(url, records, feedback, 0.95, 300) for url in (f"sqlite:///{tmp_path / 's.sqlite'}", postgres_url)]
    a, b = tables
    assert a.rows == b.rows > 0 and a.arms == b.arms and a.periods == b.periods
    assert a.tail_threshold_ms == b.tail_threshold_ms is not None
    for name in UnitTable.ROW_FIELDS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, err_msg=name)
    assert a.labels.keys() == b.labels.keys() and all((a.labels[k] == b.labels[k]).all() for k in a.labels)
    assert (a.tail == b.tail).all() and a.tail.sum() > 0
