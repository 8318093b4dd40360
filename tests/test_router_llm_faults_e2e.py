"""End to end: a generative arm that fails, through the real router in front of two real tritonservers.

The control arm is served by Triton A, the treatment arm by Triton B (the same tiny causal LM), with the control
as the fallback. B is made to fail with signals to its process group, never with a stand-in: SIGKILL (the server
dies mid-stream), SIGSTOP (it hangs: no more tokens, or no first token). What is checked, by the stream's own
events and the router's counters, never by a clock: a stream that breaks off after tokens were sent ends with an
OpenAI error event (not a hang, not a fallback), counted against the arm; before the first token the fallback
serves the request; the other arm keeps serving throughout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from experiments.assignment import Assigner
from experiments.spec import experiment_from_dict
from export.config import ExportConfig
from export.contract import GENERATIVE
from export.publish_causal import publish_causal
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tests.test_router_llm_e2e import metric

pytestmark = pytest.mark.e2e

MODEL = GENERATIVE.default_model_name
EXPERIMENT = "verdict-faults"
LONG = {"model": EXPERIMENT, "prompt": "Review of Heat: taut.", "max_tokens": 480, "ignore_eos": True, "stream": True}
"""A stream far longer than the 3 tokens read before the arm is made to fail (up to the tiny model's context)."""


def spec(a: TritonServer, b: TritonServer, **timeouts: float) -> dict:
    return {"name": EXPERIMENT, "upstream": a.http_url, "grpc_upstream": a.grpc_url, "fallback": "control",
            "sticky": {"header": "X-User-Id"}, "generation_timeouts": timeouts,
            "arms": [{"name": "control", "model": MODEL, "version": "1", "weight": 50},
                     {"name": "treatment", "model": MODEL, "version": "1", "weight": 50, "upstream": b.http_url,
                      "grpc_upstream": b.grpc_url}]}


def user_of(arm: str) -> str:
    """A sticky key the experiment assigns to ``arm``."""
    stub = {"name": EXPERIMENT, "sticky": {"header": "X-User-Id"},
            "arms": [{"name": n, "model": MODEL, "weight": 50} for n in ("control", "treatment")]}
    assigner = Assigner(experiment_from_dict(stub))
    return next(u for u in (f"user-{i}" for i in range(1000)) if assigner.assign(u, None) == arm)


@pytest.fixture(scope="module")
def repository(tiny_causal_onnx_dir, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("llm-faults") / "model_repository"
    publish_causal(tiny_causal_onnx_dir, "fp32", ExportConfig(task="causal-lm", repository=repo, model_name=MODEL,
                                                               max_sequences=4, served_versions=0))
    return repo


@pytest.fixture(scope="module")
def triton_a(repository) -> Iterator[TritonServer]:
    with TritonServer(repository, startup_timeout=120) as server:
        yield server


@pytest.fixture
def triton_b(repository, tmp_path) -> Iterator[TritonServer]:
    """The treatment's Triton, one per test (the tests break it); continued before it is stopped."""
    server = TritonServer(repository, startup_timeout=120, log_file=tmp_path / "triton-b.log").start()
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.killpg(os.getpgid(server.pid), signal.SIGCONT)
        server.stop()


def freeze(server: TritonServer) -> None:
    """SIGSTOP the server's process group: it holds its connections open and sends nothing."""
    os.killpg(os.getpgid(server.pid), signal.SIGSTOP)


@contextlib.contextmanager
def router_for(tmp_path: Path, a: TritonServer, b: TritonServer, **timeouts: float) -> Iterator[RouterProcess]:
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(spec(a, b, **timeouts)))
    with RouterProcess(tmp_path / "experiment.yaml", log_file=tmp_path / "router.log",
                       extra_args=["--store", "memory", "--log-level", "info"]) as router:
        yield router


def counters(router: RouterProcess) -> dict[str, float]:
    text = httpx.get(f"{router.url}/metrics", timeout=10, trust_env=False).text
    return {"treatment_503": metric(text, "router_errors_total", arm="treatment", code="503", kind="server"),
            "treatment_504": metric(text, "router_errors_total", arm="treatment", code="504", kind="server"),
            "control_errors": metric(text, "router_errors_total", arm="control", kind="server"),
            "fallbacks": metric(text, "router_fallbacks_total", from_arm="treatment", to_arm="control")}


def break_mid_stream(router: RouterProcess, user: str, fail) -> tuple[str, list[dict], list[str]]:
    """Stream ``LONG`` as ``user``, read 3 token chunks, call ``fail()``, then read the stream to its end: the arm
    that served it, every event's JSON, and the non-JSON data lines (``[DONE]``)."""
    events, others, failed = [], [], False
    with httpx.Client(base_url=router.url, timeout=120, trust_env=False) as client:
        with client.stream("POST", "/v1/completions", json=LONG, headers={"X-User-Id": user}) as r:
            assert r.status_code == 200
            arm = r.headers["x-variant"]
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                else:
                    others.append(line[6:])
                if len(events) == 3 and not failed:
                    failed = True
                    fail()
    return arm, events, others


def test_an_arm_that_dies_mid_stream_ends_the_stream_cleanly_and_the_others_keep_serving(triton_a, triton_b,
                                                                                       tmp_path):
    with router_for(tmp_path, triton_a, triton_b, token_s=60.0) as router:
        before = counters(router)

        def die() -> None:
            freeze(triton_b)  # no token leaves it from here on, then it dies with the stream open
            triton_b.kill()

        arm, events, others = break_mid_stream(router, user_of("treatment"), die)
        assert arm == "treatment"
        tokens, error = events[:-1], events[-1]
        assert len(tokens) >= 3 and all(e["choices"][0]["finish_reason"] is None for e in tokens)
        assert error["error"]["type"] == "server_error" and "broke off the stream" in error["error"]["message"]
        assert others == []  # no [DONE]: the stream ended with its error
        after = counters(router)
        assert after["treatment_503"] == before["treatment_503"] + 1
        assert after["fallbacks"] == before["fallbacks"]  # never a fallback once tokens were sent

        with httpx.Client(base_url=router.url, timeout=60, trust_env=False) as client:
            body = {"model": EXPERIMENT, "prompt": "Review of Heat: taut.", "max_tokens": 5}
            served = client.post("/v1/completions", json=body, headers={"X-User-Id": user_of("control")})
            assert served.status_code == 200 and served.headers["x-variant"] == "control"
            # the treatment's users are served by the fallback, before any token: whole and streamed
            fell = client.post("/v1/completions", json=body, headers={"X-User-Id": user_of("treatment")})
            assert fell.status_code == 200 and fell.headers["x-variant"] == "control"
            assert fell.json()["tunestack"]["arm"] == "control" and fell.json()["choices"][0]["text"] == \
                served.json()["choices"][0]["text"]
            with client.stream("POST", "/v1/completions", json=body | {"stream": True},
                               headers={"X-User-Id": user_of("treatment")}) as r:
                chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            assert r.headers["x-variant"] == "control" and {c["tunestack"]["arm"] for c in chunks} == {"control"}
        final = counters(router)
        assert final["fallbacks"] == after["fallbacks"] + 2 and final["control_errors"] == before["control_errors"]


def test_a_stream_whose_arm_stops_sending_ends_with_a_timeout_error_event(triton_a, triton_b, tmp_path):
    with router_for(tmp_path, triton_a, triton_b, token_s=1.0) as router:
        before = counters(router)
        arm, events, others = break_mid_stream(router, user_of("treatment"), lambda: freeze(triton_b))
        assert arm == "treatment"
        error = events[-1]["error"]
        assert (error["type"], error["code"]) == ("server_error", "timeout")
        assert "sent no token for 1 s" in error["message"] and others == []
        after = counters(router)
        assert after["treatment_504"] == before["treatment_504"] + 1 and after["fallbacks"] == before["fallbacks"]


def test_an_arm_without_a_first_token_in_time_falls_back(triton_a, triton_b, tmp_path):
    with router_for(tmp_path, triton_a, triton_b, first_token_s=1.0) as router:
        before = counters(router)
        freeze(triton_b)
        body = {"model": EXPERIMENT, "messages": [{"role": "user", "content": "Review of Heat: taut."}],
                "max_tokens": 4}
        r = httpx.post(f"{router.url}/v1/chat/completions", json=body, headers={"X-User-Id": user_of("treatment")},
                       timeout=60, trust_env=False)
        assert r.status_code == 200 and r.headers["x-variant"] == "control"
        after = counters(router)
        # the treatment's timeout counts against it, and the fallback served the request
        assert after["treatment_504"] == before["treatment_504"] + 1
        assert after["fallbacks"] == before["fallbacks"] + 1
