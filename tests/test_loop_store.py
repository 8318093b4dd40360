"""The loop's tables on SQLite and a real PostgreSQL: the lease (one holder at a time, expiry, release, a
cycle that loses it stops), kept inputs joined to feedback, retention (older inputs deleted, newer kept), steps
recorded once; and the router's input keeper (sampling, reading texts off the request path). The sweep that
deletes them: test_store_sweep.py."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from experiments.retention import RetainInputs, RetentionError
from experiments.store import AnswerRow, open_store
from experiments.store.loop_tables import LoopLog, count_labelled, delete_inputs, labelled_inputs
from experiments.store.records import InputRow
from serving.router.input_keeper import InputKeeper

EXP = "loop"


def test_the_lease_has_one_holder_until_it_expires_or_is_released(store_url):
    async def run():
        async with open_store(store_url) as store:
            a, b = LoopLog(store, EXP), LoopLog(store, EXP)
            assert await a.acquire("a", 600)
            assert not await b.acquire("b", 600)  # held by a
            assert await a.acquire("a", 600)  # a renews its own
            assert (await b.holder())[0] == "a"
            await b.release("b")  # not b's lease: nothing happens
            assert not await b.acquire("b", 600)
            assert await LoopLog(store, "other").acquire("b", 600)  # another loop has its own lease
            await a.release("a")
            assert await a.holder() is None
            assert await b.acquire("b", -1.0)  # b takes it, already expired (a holder that crashed)
            assert await a.acquire("a", 600)  # so a may take it over
            assert (await b.holder())[0] == "a"
    asyncio.run(run())


def test_two_loops_racing_for_the_lease_get_one_winner(store_url):
    async def run():
        async with open_store(store_url) as s1, open_store(store_url) as s2:
            wins = await asyncio.gather(*[LoopLog(s, EXP).acquire(f"h{i}", 600) for i, s in enumerate([s1, s2] * 4)])
            assert sum(wins) == 1, wins
    asyncio.run(run())


def test_kept_inputs_join_feedback_and_are_deleted_after_retention(store_url):
    now = time.time()

    async def run():
        async with open_store(store_url) as store:
            rows = []
            for i, age in enumerate([3600.0, 3600.0, 10.0, 5.0]):
                rid = f"r{i}"
                rows.append(AnswerRow(EXP, rid, "control", "control", "1", f"u{i}", 0.01, ("positive",), now - age))
                rows.append(InputRow(EXP, rid, "control", (f"text {i}",), now - age))
            await store.write_batch(rows)
            await store.write_batch([InputRow(EXP, "r0", "control", ("a duplicate is ignored",), now)])
            for rid, label in (("r0", "negative"), ("r2", "positive")):
                await store.add_feedback(EXP, rid, (label,))
            got = await labelled_inputs(store, EXP)
            assert [(g.request_id, g.texts, g.labels) for g in got] == [("r0", ("text 0",), ("negative",)),
                                                                         ("r2", ("text 2",), ("positive",))]
            assert await count_labelled(store, EXP, since=now - 60) == 1
            assert await delete_inputs(store, EXP, older_than=now - 60) == 2  # r0, r1: older than the retention
            assert [g.request_id for g in await labelled_inputs(store, EXP)] == ["r2"]
            left = await store._query("SELECT request_id FROM kept_inputs WHERE experiment = ? ORDER BY request_id", [EXP])
            assert [r[0] for r in left] == ["r2", "r3"]
    asyncio.run(run())


def test_a_step_is_recorded_once(store_url):
    async def run():
        async with open_store(store_url) as store:
            log = LoopLog(store, EXP)
            assert await log.record(1, "dataset", "manual", {"n": 1}, "me")
            assert not await log.record(1, "dataset", "manual", {"n": 2}, "me")
            assert await log.record(1, "train", "manual", {"adapter": "x"}, "me")
            steps = await log.steps(1)
            assert [(s.step, s.output) for s in steps] == [("dataset", {"n": 1}), ("train", {"adapter": "x"})]
            assert await log.last_cycle() == 1
    asyncio.run(run())


def test_the_input_keeper_samples_and_reads_texts_only_in_its_worker():
    sink: list = []
    reads: list = []

    def texts(i):
        def read():
            reads.append(i)
            return [f"text {i}"]
        return read

    keeper = InputKeeper(EXP, RetainInputs(fraction=0.5), sink.extend, CollectorRegistry(), random.Random(1))
    for i in range(400):
        keeper.offer(f"r{i}", "control", texts(i))
    assert reads == []  # nothing read on the request path
    asyncio.run(keeper.flush())
    assert 150 < len(sink) < 250, len(sink)
    assert sorted(reads) == sorted(int(r.request_id[1:]) for r in sink)
    assert all(r.texts == (f"text {r.request_id[1:]}",) for r in sink)


def test_retention_is_off_by_default_and_validated():
    assert not RetainInputs().enabled
    assert RetainInputs.from_dict(None) == RetainInputs()
    with pytest.raises(RetentionError, match="extra"):
        RetainInputs.from_dict({"fraction": 0.5, "extra": 1})
    with pytest.raises(RetentionError, match=r"fraction=2.*retention_s=0"):
        RetainInputs(fraction=2, retention_s=0)


def test_a_cycle_whose_lease_is_taken_over_stops_and_records_nothing_more(store_url, monkeypatch, tmp_path):
    from experiments.rollout.config import RolloutConfig
    from workflows.loop.config import LoopConfig
    from workflows.loop.cycle import Cycle, LoopContext
    from workflows.loop.run import once

    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def long_work():  # a step's work in a worker thread (training, export)
        started.set()
        release.wait(60)
        finished.set()
        return {"rows": 1}

    async def dataset(self, done):
        return await asyncio.to_thread(long_work)

    monkeypatch.setattr(Cycle, "_dataset", dataset)
    ctx = LoopContext(EXP, LoopConfig(production_run=tmp_path / "run", lease_s=0.3), RolloutConfig())

    async def run():
        async with open_store(store_url) as store:
            loop_log = LoopLog(store, EXP)
            look = asyncio.create_task(once(store, ctx, "manual", "a", time.time()))
            await asyncio.to_thread(started.wait, 60)
            await loop_log.release("a")  # a stalls past its lease and b takes the loop over
            assert await loop_log.acquire("b", 600)
            out = await asyncio.wait_for(look, 60)
            release.set()
            await asyncio.to_thread(finished.wait, 60)  # a's step finishes in its thread ...
            await asyncio.sleep(0.1)
            return out, await loop_log.steps(), await loop_log.holder()

    out, steps, holder = asyncio.run(run())
    assert out is None and finished.is_set()
    assert steps == []  # ... and is never recorded: b resumes from the store
    assert holder[0] == "b"  # a did not release b's lease
