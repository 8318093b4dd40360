"""What the router records for the judge's unit table, without servers: the period in the router's state
(the store revision, or a counter in memory that moves when the weights do), and each request's outcome
counted once -- an answer, or the server error its caller got, against the arm it happened on, in its unit
and period -- through the real Recorder, RecordSink, BatchWriter and a real SQLite store."""

from __future__ import annotations

import asyncio

import pytest

from experiments.judge.units import unit_id
from experiments.spec import experiment_from_dict
from experiments.store import open_store
from experiments.store.writer import BatchWriter
from serving.router.config import RouterConfig
from serving.router.errors import BadRequest, UpstreamError, UpstreamTimeout
from serving.router.record_sink import RecordSink
from serving.router.routing import record_refused, with_fallback
from serving.router.state import FIRST_PERIOD, RouterState

SPEC = {"name": "ab", "upstream": "http://127.0.0.1:1", "sticky": {"header": "X-User-Id"}, "fallback": "control",
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 50},
                 {"name": "treatment", "model": "m", "version": "2", "weight": 50}]}


def state_of(spec: dict = SPEC) -> RouterState:
    return RouterState.create(RouterConfig(experiment="unused.yaml"), experiment_from_dict(spec), None)


def test_the_period_moves_with_the_weights_in_memory_and_is_the_revision_with_a_store():
    state = state_of()
    exp, assigner, period = state.current
    assert period == FIRST_PERIOD and assigner.arms == exp.arm_names
    state.set_experiment(exp, "a reload of the same file")
    assert state.period == FIRST_PERIOD  # same weights: same period
    state.set_experiment(exp.with_weights({"control": 90, "treatment": 10}), "ramp down")
    assert state.period == FIRST_PERIOD + 1 and state.current[0].shares["treatment"] == pytest.approx(0.1)
    state.set_experiment(exp.with_weights({"control": 50, "treatment": 50}), "ramp up")
    assert state.period == FIRST_PERIOD + 2
    state.set_experiment(exp, "store revision 7", period=7)  # with a store: the revision
    assert state.period == 7


def test_each_request_counts_once_in_its_unit_and_period(tmp_path):
    """Four requests of user-1 and one unkeyed, in period 3: answered; answered by the fallback after the
    treatment failed; failed on both arms; failed for the caller's mistake; and an unkeyed answer."""
    state = state_of()
    state.set_experiment(state.experiment, "store revision 3", period=3)
    exp, _, period = state.current

    async def outcome(rid: str, key: str | None, arm: str, fail: set[str], error=None) -> None:
        async def send(name: str) -> str:
            if name in fail:
                raise UpstreamTimeout(f"{name} timed out")
            return "answer"
        try:
            if error is not None:
                raise error
            _, served = await with_fallback(state, exp, arm, send)
        except (UpstreamError, BadRequest) as e:
            record_refused(state, e, arm, key, rid, period)
            return
        state.recorder.served(rid, served, 0.004, ("POSITIVE",), key=key, assigned=arm, confidences=(0.9,),
                              period=period)

    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            for _ in range(3):  # revisions 1-3: period 3 is the third
                await store.add_revision("ab", SPEC, "file", "f", "start")
            writer = BatchWriter(store)
            state.recorder.sink = RecordSink(writer, lambda: state.experiment)
            await outcome("r1", "user-1", "treatment", set())
            await outcome("r2", "user-1", "treatment", {"treatment"})
            await outcome("r3", "user-1", "treatment", {"treatment", "control"})
            await outcome("r4", "user-1", "treatment", set(), BadRequest("no TEXT input"))
            await outcome("r5", None, "control", set())
            await writer.flush()
            errors = await store._query("SELECT arm, code, assigned_arm, unit, period FROM errors ORDER BY id")
            return errors, await store.unit_table("ab", ("control", "treatment"), 0.99, 1000)
    errors, t = asyncio.run(go())
    user = unit_id("user-1", "")
    assert errors == [("treatment", "504", None, None, None),  # r2's first try: a fallback followed
                      ("treatment", "504", None, None, None),  # r3's first try
                      ("control", "504", "treatment", user, 3),  # r3's outcome: the fallback failed too
                      ("treatment", "400", None, None, None)]  # r4: the caller's mistake
    rows = {(t.arms[a], t.arms[s], int(p), bool(k)): (int(n), int(e), int(ok))
            for a, s, p, k, n, e, ok in zip(t.arm, t.assigned, t.period, t.keyed, t.requests, t.server_errors,
                                            t.answered, strict=True)}
    assert rows == {("treatment", "treatment", 3, True): (1, 0, 1),  # r1
                    ("control", "treatment", 3, True): (2, 1, 1),  # r2 answered by the fallback, r3 failed there
                    ("control", "control", 3, False): (1, 0, 1)}  # r5, in a pseudo-unit
    assert len(set(t.unit[t.keyed].tolist())) == 1  # one user: one unit in every arm
    assert state.recorder.registry.get_sample_value(
        "router_fallbacks_total", {"experiment": "ab", "from_arm": "treatment", "to_arm": "control"}) == 2
