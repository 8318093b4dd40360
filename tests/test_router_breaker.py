"""The circuit breaker both front doors share: opens after a run of failures, closes on an answer, and is
one object for the HTTP and the gRPC upstream of a router."""

from __future__ import annotations

import pytest

from serving.router.breaker import CircuitBreaker
from serving.router.config import RouterConfig, experiment_from_dict
from serving.router.errors import UpstreamError
from serving.router.state import RouterState
from serving.router.upstream import Target

TARGET = Target("http://127.0.0.1:1", "m", "1")


def test_opens_after_the_run_and_closes_on_an_answer():
    breaker = CircuitBreaker(failures=3, cooldown_s=60.0)
    for _ in range(2):
        breaker.record(TARGET, ok=False)
    breaker.check(TARGET)  # two failures: still closed
    breaker.record(TARGET, ok=False)
    assert breaker.is_open(TARGET)
    with pytest.raises(UpstreamError, match="marked down after 3 consecutive failures"):
        breaker.check(TARGET)
    breaker.check(Target("http://127.0.0.1:1", "m", "2"))  # another version is not affected
    breaker.record(TARGET, ok=True)
    assert not breaker.is_open(TARGET)
    breaker.check(TARGET)


def test_an_open_breaker_is_tried_again_after_its_cooldown():
    breaker = CircuitBreaker(failures=1, cooldown_s=0.0)
    breaker.record(TARGET, ok=False)
    assert breaker.is_open(TARGET)
    breaker.check(TARGET)  # the cooldown is over: one request may go through


def test_http_and_grpc_share_one_breaker():
    exp = experiment_from_dict({"name": "e", "upstream": "http://127.0.0.1:1",
                                "arms": [{"name": "a", "model": "m", "version": "1", "weight": 1},
                                         {"name": "b", "model": "m", "version": "2", "weight": 1}]})
    state = RouterState.create(RouterConfig(experiment="unused.yaml"), exp, None)
    assert state.grpc_upstream._breaker is state.upstream.breaker
    for _ in range(3):
        state.upstream.breaker.record(state.target(exp, "a"), ok=False)
    assert state.upstream.breaker.is_open(state.grpc_target(exp, "a").key)
