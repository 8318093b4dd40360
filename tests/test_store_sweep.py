"""The router's store sweep and the retention of the judge's history of looks: the ``look_retention`` section
(defaults, every problem reported), the thinning rule simulated the way the router applies it (looks every
5 s from two replicas, a sweep every few minutes while they arrive), the same rule in SQLite and a real
PostgreSQL, and one sweep that expires feedback, deletes kept inputs and thins looks."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time

import pytest

from experiments.errors import ExperimentError
from experiments.retention import LookRetention, RetainInputs, RetentionError
from experiments.spec import experiment_from_dict
from experiments.store import open_store
from experiments.store.looks import looks_to_drop, thin_looks
from experiments.store.records import InputRow
from serving.router.store_sweep import MAX_INTERVAL_S, StoreSweep

EXP = "ab"
DAY = 86400.0
INSERT = "INSERT INTO judge_looks (experiment, at, look) VALUES (?, ?, ?)"


def look_times(start: float, end: float, every_s: float, rng: random.Random) -> list[float]:
    """Looks every ``every_s`` (jittered) from two replicas that now and then look at once (a duplicate)."""
    times, t = [], start
    while t < end:
        times.append(t)
        if rng.random() < 0.05:
            times.append(t + rng.uniform(0, 0.5))
        t += every_s * rng.uniform(0.9, 1.1)
    return times


def first_of_each(times: list[float], spacing: float) -> dict[int, float]:
    """The earliest look of each clock minute or hour (``spacing``)."""
    first: dict[int, float] = {}
    for t in sorted(times):
        first.setdefault(math.floor(t / spacing), t)
    return first


def test_look_retention_defaults_and_every_problem_reported():
    default = LookRetention.from_dict(None)
    assert (default.every_look_s, default.per_minute_s, default.max_age_s) == (3600.0, DAY, None)
    now = 1_700_000_070.0  # 30 s into a clock minute
    ages = (10, 3601, DAY - 60, DAY - 20, DAY + 1, 400 * DAY)  # DAY - 20: its minute started DAY + 30 ago
    assert [default.spacing(now - a, now) for a in ages] == [0.0, 60.0, 60.0, 3600.0, 3600.0, 3600.0]
    week = LookRetention(max_age_s=7 * DAY)
    assert week.spacing(now - 8 * DAY, now) is None and week.spacing(now - 6 * DAY, now) == 3600.0
    with pytest.raises(RetentionError, match=r"every_look_s=-1.*per_minute_s=.a day.*max_age_s=0"):
        LookRetention(every_look_s=-1, per_minute_s="a day", max_age_s=0)
    with pytest.raises(RetentionError, match=r"per_minute_s=60: expected seconds >= every_look_s \(3600"):
        LookRetention(per_minute_s=60)
    with pytest.raises(RetentionError, match=r"look_retention: unknown key\(s\) \['keep'\]"):
        LookRetention.from_dict({"keep": 1})
    with pytest.raises(RetentionError, match="fraction=True"):
        RetainInputs(fraction=True)
    spec = {"name": EXP, "arms": [{"name": "control", "model": "m", "version": "1"},
                                  {"name": "treatment", "model": "m", "version": "2"}], "look_retention": {}}
    assert experiment_from_dict(spec).name == EXP
    with pytest.raises(ExperimentError, match="look_retention"):
        experiment_from_dict({**spec, "look_retentoin": {}})


@pytest.mark.parametrize("max_age_s", [None, 30 * 3600.0])
def test_thinning_while_looks_arrive_keeps_the_first_of_each_minute_then_hour(max_age_s):
    """Two days of looks every 5 s, thinned every 10 minutes as they arrive (as the router's sweep does): what
    is left equals one thinning at the end, holds every look of the newest hour, the first look of each minute
    up to a day old, the first of each hour beyond, nothing past ``max_age_s``, and the table stays small."""
    policy = LookRetention(max_age_s=max_age_s)
    rng = random.Random(7)
    start = 1_700_000_000.0
    arrivals = look_times(start, start + 2 * DAY, 5.0, rng)
    table: dict[int, float] = {}
    sweep_at, most_rows = start + 600, 0
    for row_id, t in enumerate(arrivals):
        if t >= sweep_at:
            for gone in looks_to_drop(table.items(), sweep_at, policy):
                del table[gone]
            most_rows, sweep_at = max(most_rows, len(table)), sweep_at + 600
        table[row_id] = t
    now = arrivals[-1]
    once = looks_to_drop(enumerate(arrivals), now, policy)
    for gone in looks_to_drop(table.items(), now, policy):
        del table[gone]
    survivors = sorted(table.values())
    assert survivors == sorted(set(arrivals) - {arrivals[i] for i in once})
    assert looks_to_drop(table.items(), now, policy) == []  # thinning twice drops nothing more
    recent = [t for t in arrivals if now - t <= policy.every_look_s]
    assert [t for t in survivors if now - t <= policy.every_look_s] == recent and len(recent) > 700
    minutes = [t for t in survivors if policy.every_look_s < now - t < DAY - 60]
    assert set(minutes) <= set(first_of_each(arrivals, 60).values()) and 1360 <= len(minutes) <= 1381
    hours = [t for t in survivors if now - t > DAY + 3600]
    assert set(hours) <= set(first_of_each(arrivals, 3600).values())
    assert 4 <= len(hours) <= 6 if max_age_s else 22 <= len(hours) <= 24
    assert max_age_s is None or now - survivors[0] <= max_age_s
    assert most_rows < 2600, most_rows  # bounded while the looks pile up (17,280 a day)


def test_thinning_in_the_store_keeps_the_rule_and_other_experiments(store_url):
    now = time.time()
    rng = random.Random(3)
    times = look_times(now - 3 * DAY, now, 30.0, rng)
    policy = LookRetention(per_minute_s=DAY / 2, max_age_s=2.5 * DAY)

    async def go():
        async with open_store(store_url) as store:
            rows = [(EXP, t, json.dumps({"at": t, "treatments": {}})) for t in times]
            rows += [("other", t, json.dumps({"at": t})) for t in times[:50]]
            await store._run([(INSERT, rows)])
            dropped = await thin_looks(store, EXP, policy, now)
            again = await thin_looks(store, EXP, policy, now)
            left = [x["at"] for x in await store.looks(EXP, limit=100_000)]
            other = await store._query("SELECT COUNT(*) FROM judge_looks WHERE experiment = ?", ["other"])
            return dropped, again, left, int(other[0][0])
    dropped, again, left, other = asyncio.run(go())
    drop = set(looks_to_drop(enumerate(times), now, policy))
    expected = [t for i, t in enumerate(times) if i not in drop]
    assert left == pytest.approx(expected) and dropped == len(drop) and again == 0
    assert 150 < len(expected) < 1000 < len(times) and other == 50


def test_one_sweep_expires_feedback_deletes_kept_inputs_and_thins_looks(store_url):
    expired: list[int] = []
    now = time.time()

    async def go():
        async with open_store(store_url) as store:
            sweep = StoreSweep(store, EXP, 600.0, RetainInputs(fraction=1.0, retention_s=3600),
                               LookRetention(every_look_s=600), expired.append)
            assert sweep.interval_s == MAX_INTERVAL_S
            assert StoreSweep(store, EXP, 40.0, RetainInputs(), LookRetention()).interval_s == 10.0
            await store.add_feedback(EXP, "never-answered", ("positive",))
            await store.write_batch([InputRow(EXP, "old", "control", ("old text",), now - 7200),
                                     InputRow(EXP, "new", "control", ("new text",), now)])
            await store._run([(INSERT, [(EXP, t, "{}") for t in (now - 1200, now - 1199, now - 1198, now - 10)])])
            later = now + 601  # the feedback (stored at about `now`) is older than 600 s by then
            first, second = await sweep.once(later), await sweep.once(later)
            inputs = await store._query("SELECT request_id FROM kept_inputs WHERE experiment = ?", [EXP])
            return first, second, [r[0] for r in inputs], len(await store.looks(EXP))
    first, second, inputs, looks = asyncio.run(go())
    assert (first.feedback, first.inputs) == (1, 1) and first.looks in (1, 2)  # 3 looks in 2 s: 1 or 2 minutes
    assert (second.feedback, second.inputs, second.looks) == (0, 0, 0) and expired == [1]
    assert inputs == ["new"] and looks == 4 - first.looks


def test_the_running_sweep_makes_its_first_pass_at_once(tmp_path):
    now = time.time()

    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            await store.write_batch([InputRow(EXP, "old", "control", ("old text",), now - 7200)])
            await store.add_feedback(EXP, "never-answered", ("positive",))
            done = asyncio.Event()
            sweep = StoreSweep(store, EXP, 1e-6, RetainInputs(fraction=1.0, retention_s=3600), LookRetention(),
                               lambda n: done.set())
            task = asyncio.get_running_loop().create_task(sweep.run())
            await asyncio.wait_for(done.wait(), 120)  # a cap for a busy machine: the first pass runs at once
            task.cancel()
            return await store._query("SELECT COUNT(*) FROM kept_inputs WHERE experiment = ?", [EXP])
    assert asyncio.run(go()) == [(0,)]
