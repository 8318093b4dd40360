"""Quality feedback on generated answers through the experiment store, on SQLite and on a real PostgreSQL, the way
label feedback goes (``test_store_feedback.py``): a rating or a reference text that arrives before its answer is
kept and joins it (on the answer's arm, unit and period; a reference scored by ROUGE-L against the answer's text
once that text is in), duplicates are refused whether pending or joined, feedback whose answer never comes
expires into the same count as label feedback, and two "replicas" writing answers and quality feedback at once
never leave feedback behind."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from experiments.generation import GenerationSample, reference_score
from experiments.judge.units import unit_id
from experiments.store import AnswerRow, DuplicateFeedback, open_store

EXP = "gen"
SPEC = {"name": EXP, "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 50},
                 {"name": "treatment", "model": "m", "version": "2", "weight": 50}]}
STREAM = GenerationSample(40.0, (10.0, 12.0), 3, 0.062)


def answer(rid: str, arm: str = "control", text: str | None = "Fresh: the critic recommends Heat.", period: int = 1,
           key: str | None = "user-1", assigned: str | None = None) -> AnswerRow:
    return AnswerRow(EXP, rid, arm, assigned or arm, "1", key, STREAM.seconds, (), time.time(), (), period, STREAM,
                     text)


async def quality_rows(store) -> dict[str, tuple]:
    rows = await store._query("SELECT request_id, arm, assigned_arm, period, unit, score FROM quality_feedback "
                              "WHERE experiment = ?", [EXP])
    return {r[0]: (*r[1:5], pytest.approx(float(r[5]))) for r in rows}


async def unit_quality(store) -> dict[tuple, tuple[float, float]]:
    rows = await store._query("SELECT arm, assigned_arm, period, unit, quality_n, quality_sum FROM unit_stats "
                              "WHERE experiment = ? AND quality_n > 0", [EXP])
    return {tuple(r[:4]): (float(r[4]), pytest.approx(float(r[5]))) for r in rows}


def test_a_rating_and_a_reference_before_their_answers_are_kept_and_join_them(store_url):
    reference = "Rotten: the critic does not recommend Heat."
    text = "Fresh: the critic recommends Heat."

    async def go():
        async with open_store(store_url) as store:
            await store.add_revision(EXP, SPEC, "file", "f", "start")
            early = [await store.add_quality(EXP, "r1", 0.75),  # no answer yet
                     await store.add_quality(EXP, "r2", None, reference)]  # no answer, no text to score yet
            before = await store.feedback_counts(EXP)
            # r1's answer comes from a fallback (served by control, assigned to treatment) in period 2
            await store.write_batch([answer("r1", "control", period=2, key="u7", assigned="treatment"),
                                     answer("r2", "treatment", text=text, key=None)])
            await store.write_batch([answer("r3", "treatment")])
            late = await store.add_quality(EXP, "r3", None, "Fresh: recommended.")  # text in: scored, joined at once
            return early, before, late, await quality_rows(store), await unit_quality(store), \
                await store.feedback_counts(EXP)

    early, before, late, rows, units, after = asyncio.run(go())
    assert early == [None, None] and before == {"pending": 2, "expired": 0}
    scored = reference_score(text, reference)
    assert 0 < scored < 1
    assert late == ("treatment", pytest.approx(reference_score(text, "Fresh: recommended.")))
    assert rows == {"r1": ("control", "treatment", 2, unit_id("u7", "r1"), pytest.approx(0.75)),
                    "r2": ("treatment", "treatment", 1, unit_id(None, "r2"), pytest.approx(scored)),
                    "r3": ("treatment", "treatment", 1, unit_id("user-1", "r3"), late[1])}
    assert units == {("control", "treatment", 2, unit_id("u7", "r1")): (1.0, pytest.approx(0.75)),
                     ("treatment", "treatment", 1, unit_id(None, "r2")): (1.0, pytest.approx(scored)),
                     ("treatment", "treatment", 1, unit_id("user-1", "r3")): (1.0, late[1])}
    assert after == {"pending": 0, "expired": 0}


def test_duplicate_quality_feedback_is_refused_whether_pending_or_joined(store_url):
    async def go():
        async with open_store(store_url) as store:
            await store.add_quality(EXP, "r1", None, "Fresh.")
            with pytest.raises(DuplicateFeedback):  # the first copy is pending
                await store.add_quality(EXP, "r1", 0.5)
            await store.write_batch([answer("r1", "treatment", text="Fresh.")])
            with pytest.raises(DuplicateFeedback):  # the first copy is joined
                await store.add_quality(EXP, "r1", 0.1)
            return await quality_rows(store), await unit_quality(store), await store.feedback_counts(EXP)

    rows, units, counts = asyncio.run(go())
    assert rows == {"r1": ("treatment", "treatment", 1, unit_id("user-1", "r1"), pytest.approx(1.0))}
    assert list(units.values()) == [(1.0, pytest.approx(1.0))] and counts == {"pending": 0, "expired": 0}


def test_quality_feedback_whose_answer_never_comes_expires_into_the_same_count(store_url):
    async def go():
        async with open_store(store_url) as store:
            await store.add_quality(EXP, "gone-1", 0.5)
            await store.add_quality(EXP, "gone-2", None, "Fresh.")
            await store.add_feedback(EXP, "gone-3", ("POSITIVE",))  # label feedback: the same expiry and count
            cutoff = time.time()
            await asyncio.sleep(0.01)
            await store.add_quality(EXP, "fresh", 0.5)
            expired = await store.expire_feedback(EXP, cutoff), await store.expire_feedback(EXP, cutoff)
            await store.write_batch([answer("gone-1"), answer("gone-2"), answer("fresh")])  # too late for gone-*
            return expired, await quality_rows(store), await store.feedback_counts(EXP)

    expired, rows, counts = asyncio.run(go())
    assert expired == (3, 0)
    assert set(rows) == {"fresh"} and counts == {"pending": 0, "expired": 3}


def test_two_replicas_writing_answers_and_quality_feedback_at_once_leave_nothing_pending(store_url):
    """Replica A writes 300 answers (with texts) in batches of 20; replica B sends a reference or a rating for
    each in a shuffled order: the first 30 before A starts (kept pending), the last 30 after A is done (joined
    at once), the rest while A writes. Every feedback must join its answer, a reference with its ROUGE-L."""
    ids = [f"r{i}" for i in range(300)]
    rng = random.Random(0)
    shuffled = rng.sample(ids, len(ids))
    a_may_start, a_done = asyncio.Event(), asyncio.Event()
    text_of = {rid: f"Fresh: the critic recommends Film {i}." for i, rid in enumerate(ids)}

    async def replica_a(store) -> None:
        await a_may_start.wait()
        for lo in range(0, len(ids), 20):
            await store.write_batch([answer(rid, text=text_of[rid], key=f"user-{i % 37}")
                                     for i, rid in enumerate(ids[lo:lo + 20], lo)])
            await asyncio.sleep(rng.random() * 0.004)
        a_done.set()

    async def send(store, rid: str):
        number = int(rid[1:])
        if number % 2:
            return await store.add_quality(EXP, rid, number / 300)
        return await store.add_quality(EXP, rid, None, f"Rotten: the critic does not recommend Film {number}.")

    async def replica_b(store) -> list:
        results = [await send(store, rid) for rid in shuffled[:30]]
        a_may_start.set()
        for lo in range(30, 270, 10):
            results += [await send(store, rid) for rid in shuffled[lo:lo + 10]]
            await asyncio.sleep(rng.random() * 0.004)
        await a_done.wait()
        return results + [await send(store, rid) for rid in shuffled[270:]]

    async def go():
        async with open_store(store_url) as a, open_store(store_url) as b:
            await a.add_revision(EXP, SPEC, "file", "f", "start")
            _, results = await asyncio.gather(replica_a(a), replica_b(b))
            return results, await quality_rows(a), await unit_quality(a), await a.feedback_counts(EXP)

    results, rows, units, counts = asyncio.run(go())
    assert all(r is None for r in results[:30]) and all(r is not None for r in results[270:])
    assert counts == {"pending": 0, "expired": 0} and set(rows) == set(ids)
    for rid in ids:
        number = int(rid[1:])
        want = number / 300 if number % 2 else reference_score(
            text_of[rid], f"Rotten: the critic does not recommend Film {number}.")
        assert rows[rid][4] == want
    assert sum(n for n, _ in units.values()) == len(ids)
