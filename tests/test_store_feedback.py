"""Feedback through the experiment store, on SQLite and on a real PostgreSQL: feedback that arrives before its
answer is kept and joins it (on the answer's arm, unit and period), duplicates are refused whether the
first copy is pending or joined, feedback whose answer never comes expires and is counted, and two
"replicas" (two connections) writing answers and feedback at once never leave feedback behind."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from experiments.judge.units import unit_id
from experiments.store import AnswerRow, DuplicateFeedback, open_store

EXP = "ab"
SPEC = {"name": EXP, "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 50},
                 {"name": "treatment", "model": "m", "version": "2", "weight": 50}]}


def answer(rid: str, arm: str = "control", labels=("POSITIVE",), period: int = 1, key: str | None = "user-1",
           assigned: str | None = None) -> AnswerRow:
    return AnswerRow(EXP, rid, arm, assigned or arm, "1", key, 0.01, tuple(labels), time.time(), (0.8,), period)


async def feedback_rows(store) -> dict[str, tuple]:
    rows = await store._query("SELECT request_id, arm, assigned_arm, period, unit, correct FROM feedback "
                              "WHERE experiment = ?", [EXP])
    return {r[0]: tuple(r[1:]) for r in rows}


async def unit_feedback(store) -> dict[tuple, tuple[int, int]]:
    rows = await store._query("SELECT arm, assigned_arm, period, unit, feedback_n, feedback_correct FROM unit_stats "
                              "WHERE experiment = ? AND feedback_n > 0", [EXP])
    return {tuple(r[:4]): (int(r[4]), int(r[5])) for r in rows}


def test_feedback_before_its_answer_is_kept_and_joins_the_answer(store_url):
    async def go():
        async with open_store(store_url) as store:
            await store.add_revision(EXP, SPEC, "file", "f", "start")
            early = await store.add_feedback(EXP, "r1", ("NEGATIVE",))  # no answer yet
            counts_before = await store.feedback_counts(EXP)
            # the answer comes from a fallback (served by control, assigned to treatment) in period 2
            await store.write_batch([answer("r1", "control", ("NEGATIVE", "POSITIVE"), period=2, key="u7",
                                            assigned="treatment"), answer("r2", "treatment", period=1, key=None)])
            late = await store.add_feedback(EXP, "r2", ("NEGATIVE",))  # the answer is there: joined at once
            return (early, counts_before, late, await feedback_rows(store), await unit_feedback(store),
                    await store.feedback_counts(EXP))
    early, before, late, rows, units, after = asyncio.run(go())
    assert early is None and before == {"pending": 1, "expired": 0}
    assert late == ("treatment", False)
    assert rows == {"r1": ("control", "treatment", 2, unit_id("u7", "r1"), 1),  # NEGATIVE is a prefix of the answer
                    "r2": ("treatment", "treatment", 1, unit_id(None, "r2"), 0)}
    assert units == {("control", "treatment", 2, unit_id("u7", "r1")): (1, 1),
                     ("treatment", "treatment", 1, unit_id(None, "r2")): (1, 0)}
    assert after == {"pending": 0, "expired": 0}


def test_duplicate_feedback_is_refused_whether_pending_or_joined(store_url):
    async def go():
        async with open_store(store_url) as store:
            await store.add_feedback(EXP, "r1", ("POSITIVE",))
            with pytest.raises(DuplicateFeedback):  # the first copy is pending
                await store.add_feedback(EXP, "r1", ("NEGATIVE",))
            # the same request id answered twice (a client re-used it): the newest answer gets the feedback
            await store.write_batch([answer("r1", "treatment", ("NEGATIVE",))])
            await store.write_batch([answer("r1", "control", ("POSITIVE",))])
            with pytest.raises(DuplicateFeedback):  # the first copy is joined
                await store.add_feedback(EXP, "r1", ("NEGATIVE",))
            return await feedback_rows(store), await unit_feedback(store), await store.feedback_counts(EXP)
    rows, units, counts = asyncio.run(go())
    assert rows == {"r1": ("treatment", "treatment", 1, unit_id("user-1", "r1"), 0)}  # joined by the first answer
    assert sum(n for n, _ in units.values()) == 1 and counts == {"pending": 0, "expired": 0}


def test_feedback_whose_answer_never_comes_expires_and_is_counted(store_url):
    async def go():
        async with open_store(store_url) as store:
            await store.add_feedback(EXP, "gone-1", ("POSITIVE",))
            await store.add_feedback(EXP, "gone-2", ("POSITIVE",))
            cutoff = time.time()
            await asyncio.sleep(0.01)
            await store.add_feedback(EXP, "fresh", ("POSITIVE",))
            expired = await store.expire_feedback(EXP, cutoff), await store.expire_feedback(EXP, cutoff)
            await store.write_batch([answer("gone-1"), answer("fresh")])  # too late for gone-1
            return expired, await feedback_rows(store), await store.feedback_counts(EXP)
    expired, rows, counts = asyncio.run(go())
    assert expired == (2, 0)
    assert set(rows) == {"fresh"} and counts == {"pending": 0, "expired": 2}


def test_two_replicas_writing_answers_and_feedback_at_once_leave_nothing_pending(store_url):
    """Replica A writes 600 answers in batches of 20; replica B sends feedback for each of them in a shuffled
    order: the first 50 before A starts (kept pending), the last 50 after A is done (joined at once), the
    rest while A writes, so they land before, during or after the transaction that stores their answer.
    Every feedback must join its answer."""
    ids = [f"r{i}" for i in range(600)]
    rng = random.Random(0)
    shuffled = rng.sample(ids, len(ids))
    a_may_start, a_done = asyncio.Event(), asyncio.Event()

    async def replica_a(store) -> None:
        await a_may_start.wait()
        for lo in range(0, len(ids), 20):
            await store.write_batch([answer(rid, key=f"user-{i % 37}") for i, rid in enumerate(ids[lo:lo + 20], lo)])
            await asyncio.sleep(rng.random() * 0.004)
        a_done.set()

    async def replica_b(store) -> list:
        send = lambda rid: store.add_feedback(EXP, rid, ("POSITIVE",))  # noqa: E731
        results = [await send(rid) for rid in shuffled[:50]]
        a_may_start.set()
        for lo in range(50, 550, 10):
            results += [await send(rid) for rid in shuffled[lo:lo + 10]]
            await asyncio.sleep(rng.random() * 0.004)
        await a_done.wait()
        return results + [await send(rid) for rid in shuffled[550:]]

    async def go():
        async with open_store(store_url) as a, open_store(store_url) as b:
            _, results = await asyncio.gather(replica_a(a), replica_b(b))
            return results, await b.feedback_counts(EXP), await unit_feedback(b), len(await feedback_rows(b))
    results, counts, units, joined = asyncio.run(go())
    print(f"\n{sum(r is None for r in results)} of {len(ids)} feedbacks arrived before their answer (kept pending)")
    assert all(r is None for r in results[:50]) and all(r == ("control", True) for r in results[550:])
    assert counts == {"pending": 0, "expired": 0} and joined == len(ids)
    assert sum(n for n, _ in units.values()) == len(ids) and all(n == c for n, c in units.values())


def test_postgres_answers_stored_while_feedback_is_in_flight_still_join_it(postgres_url):
    """The race the per-experiment lock closes, made to happen: feedback's transaction has kept the feedback
    pending and run its join (finding no answer) but not committed, when a batch stores the answer. The batch's
    join must wait for the lock, then see the committed feedback and join it; without the lock it would run
    before the feedback commits, miss it, and leave it pending."""
    from experiments.store import feedback
    from experiments.store.postgres import _sql

    async def waiting_for_advisory_lock(store) -> bool:
        rows = await store._query("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return rows[0][0] > 0

    async def go():
        async with open_store(postgres_url) as a, open_store(postgres_url) as b:
            statements = [*b._lock_statements(EXP), *feedback.add(EXP, "r1", ("POSITIVE",), time.time())]
            async with b._connection() as conn, conn.transaction(), conn.cursor() as cur:
                for sql, rows in statements:
                    await cur.executemany(_sql(sql), rows)
                batch = asyncio.create_task(a.write_batch([answer("r1")]))
                for _ in range(600):  # until the batch's join waits for the lock (or the batch has finished)
                    if batch.done() or await waiting_for_advisory_lock(a):
                        break
                    await asyncio.sleep(0.05)
                finished_early = batch.done()
            await batch
            return finished_early, await feedback_rows(b), await b.feedback_counts(EXP), await unit_feedback(b)
    finished_early, rows, counts, units = asyncio.run(go())
    assert not finished_early  # the batch's join waited for the feedback's transaction
    assert rows == {"r1": ("control", "control", 1, unit_id("user-1", "r1"), 1)}
    assert counts == {"pending": 0, "expired": 0} and sum(n for n, _ in units.values()) == 1
