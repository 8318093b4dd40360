"""End to end: the tiny causal LM (fp32 as version 1, int8 as version 2) on the real tritonserver, the real router
as a subprocess in front, the official ``openai`` client (and httpx) against the router's OpenAI door.

Every answer is compared with the decode loop run in-process on the arm's own version folder, so "names its arm"
is checked against what the arm's model really generates; cancellation is proven with the model's own counter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from experiments.assignment import Assigner
from experiments.spec import experiment_from_dict
from export.config import ExportConfig
from export.contract import GENERATIVE
from export.decoding import SamplingParams
from export.generate import Generator
from export.publish_causal import publish_causal
from export.triton_llm.model import CANCELLED_METRIC
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack.procs import wait_for

pytestmark = pytest.mark.e2e

MODEL = GENERATIVE.default_model_name
EXPERIMENT = "verdict-ab"
VERSIONS = {"control": "1", "treatment": "2"}


def spec(triton: TritonServer, **extra) -> dict:
    return {"name": EXPERIMENT, "upstream": triton.http_url, "grpc_upstream": triton.grpc_url,
            "sticky": {"header": "X-User-Id"},
            "arms": [{"name": arm, "model": MODEL, "version": v, "weight": 50} for arm, v in VERSIONS.items()], **extra}


@pytest.fixture(scope="module")
def repository(tiny_causal_onnx_dir, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("llm-ab") / "model_repository"
    cfg = ExportConfig(task="causal-lm", repository=repo, model_name=MODEL, max_sequences=4, served_versions=0)
    assert [publish_causal(tiny_causal_onnx_dir, v, cfg).name for v in ("fp32", "int8")] == ["1", "2"]
    return repo


@pytest.fixture(scope="module")
def triton(repository) -> Iterator[TritonServer]:
    with TritonServer(repository, startup_timeout=120) as server:
        yield server


@pytest.fixture(scope="module")
def router(triton, tmp_path_factory) -> Iterator[RouterProcess]:
    folder = tmp_path_factory.mktemp("router-llm")
    (folder / "experiment.yaml").write_text(yaml.safe_dump(spec(triton)))
    with RouterProcess(folder / "experiment.yaml", log_file=folder / "router.log",
                       extra_args=["--log-level", "info"]) as r:
        yield r


@pytest.fixture(scope="module")
def references(repository) -> dict[str, Generator]:
    """The decode loop in-process on each arm's version folder."""
    return {arm: Generator.from_folder(repository / MODEL / v) for arm, v in VERSIONS.items()}


@pytest.fixture(scope="module")
def heldout(tiny_causal_onnx_dir) -> list[dict]:
    return [json.loads(line) for line in (tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()]


def oai(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)


def messages_of(row: dict) -> list[dict]:
    return [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}]


def expected(references, arm: str, prompt: str, max_tokens: int):
    ref = references[arm]
    return ref.generate(ref.encode(prompt), SamplingParams(max_tokens=max_tokens))


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def triton_counter(triton: TritonServer, name: str) -> float:
    text = httpx.get(triton.metrics_url, timeout=10).text
    return sum(float(v) for v in re.findall(rf'^{name}{{model="{MODEL}",version="\d+"}} (\S+)$', text, re.M))


# -- the API ----------------------------------------------------------------------------------------------

def test_chat_completion_names_its_arm_and_is_the_arms_answer(router, references, heldout):
    client = oai(router)
    seen = set()
    for i, row in enumerate(heldout[:6]):
        raw = client.chat.completions.with_raw_response.create(
            model=EXPERIMENT, messages=messages_of(row), max_tokens=8, user=f"chat-{i}")
        done = raw.parse()
        arm = raw.headers["x-variant"]
        assert done.model_extra["tunestack"] == {"arm": arm, "version": VERSIONS[arm],
                                                 "request_id": raw.headers["x-request-id"]}
        want = expected(references, arm, row["prompt"], 8)
        assert done.choices[0].message.content == want.text
        assert done.choices[0].finish_reason == want.finish_reason
        assert done.usage.completion_tokens == len(want.token_ids)
        assert done.usage.prompt_tokens == len(references[arm].encode(row["prompt"]))
        assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
        seen.add(arm)
    assert seen == set(VERSIONS)


def test_streamed_chat_completion_names_its_arm_in_every_chunk(router, references, heldout):
    client = oai(router)
    row = heldout[1]
    for user in ("stream-a", "stream-b", "stream-c"):
        with client.chat.completions.with_streaming_response.create(
                model=EXPERIMENT, messages=messages_of(row), max_tokens=10, user=user, stream=True,
                stream_options={"include_usage": True}) as raw:
            arm = raw.headers["x-variant"]
            chunks = list(raw.parse())
        want = expected(references, arm, row["prompt"], 10)
        assert {c.model_extra["tunestack"]["arm"] for c in chunks} == {arm}
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_text_completion_streamed_and_whole(router, references, heldout):
    client = oai(router)
    prompt = heldout[2]["prompt"]
    raw = client.completions.with_raw_response.create(model=EXPERIMENT, prompt=prompt, max_tokens=6, user="text-1")
    whole, arm = raw.parse(), raw.headers["x-variant"]
    want = expected(references, arm, prompt, 6)
    assert (whole.object, whole.choices[0].text, whole.usage.completion_tokens) == \
        ("text_completion", want.text, len(want.token_ids))
    parts = list(client.completions.create(model=EXPERIMENT, prompt=prompt, max_tokens=6, user="text-1", stream=True))
    assert "".join(p.choices[0].text for p in parts) == want.text
    assert {p.model_extra["tunestack"]["arm"] for p in parts} == {arm}


def test_sampling_parameters_and_stop_reach_the_arms_model(router, references, heldout):
    client = oai(router)
    prompt = heldout[3]["prompt"]
    kwargs = dict(model=EXPERIMENT, prompt=prompt, max_tokens=16, temperature=1.0, top_p=0.9, seed=7, user="seeded")
    raw = client.completions.with_raw_response.create(**kwargs)
    arm, text = raw.headers["x-variant"], raw.parse().choices[0].text
    ref = references[arm]
    assert text == ref.generate(ref.encode(prompt), SamplingParams(16, 1.0, 0.9, seed=7)).text
    full = ref.generate(ref.encode(prompt), SamplingParams(max_tokens=24, temperature=1.0, seed=3)).text
    stop = full[5:8]
    stopped = client.completions.create(model=EXPERIMENT, prompt=prompt, max_tokens=24, temperature=1.0, seed=3,
                                        stop=[stop, "@@@"], user="seeded")
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (full[: full.find(stop)], "stop")


def test_sticky_by_user_field_and_by_header(router):
    exp = experiment_from_dict(spec_stub())
    assigner = Assigner(exp)
    with httpx.Client(base_url=router.url, timeout=60, trust_env=False) as c:
        def arm_of(user: str | None, header: str | None = None) -> str:
            body = {"model": EXPERIMENT, "prompt": "Review of X: fine.", "max_tokens": 1}
            if user is not None:
                body["user"] = user
            r = c.post("/v1/completions", json=body, headers={"X-User-Id": header} if header else {})
            assert r.status_code == 200, r.text
            return r.headers["x-variant"]

        users = [f"sticky-{i}" for i in range(16)]
        first = {u: arm_of(u) for u in users}
        assert first == {u: assigner.assign(u, None) for u in users}
        assert {u: arm_of(u) for u in users} == first
        assert set(first.values()) == set(VERSIONS)
        # the experiment's sticky header wins over the user field
        assert all(arm_of("someone-else", header=u) == first[u] for u in users[:6])
        models = c.get("/v1/models").json()
        assert models["data"][0]["id"] == EXPERIMENT and models["data"][0]["tunestack"]["arms"] == list(VERSIONS)


def test_the_shipped_generative_spec_loads():
    from experiments.rollout.config import RolloutConfig
    from experiments.spec import load_experiment

    path = Path(__file__).parents[1] / "experiments/specs/verdict-llm-ab.yaml"
    exp = load_experiment(path)
    assert [a.model for a in exp.arms] == [MODEL, MODEL] and exp.generation_timeouts.first_token_s >= 10
    assert "ttft_mean" in RolloutConfig.from_dict(yaml.safe_load(path.read_text())["rollout"]).guardrails


def spec_stub() -> dict:
    return {"name": EXPERIMENT, "sticky": {"header": "X-User-Id"},
            "arms": [{"name": arm, "model": MODEL, "version": v, "weight": 50} for arm, v in VERSIONS.items()]}


BAD = [
    ({"model": "nope"}, 404, "model", "unknown experiment 'nope'"),
    ({"max_tokens": 0}, 400, "max_tokens", "max_tokens must be an integer >= 1, got 0"),
    ({"max_completion_tokens": -3}, 400, "max_completion_tokens", "max_completion_tokens must be an integer >= 1"),
    ({"temperature": 3}, 400, "temperature", "temperature must be a number in [0, 2]"),
    ({"top_p": 0}, 400, "top_p", "top_p must be a number in (0, 1], got 0"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "stop holds 5 strings; at most 4"),
    ({"stop": [""]}, 400, "stop", "stop must be a string or a list of non-empty strings"),
    ({"seed": -1}, 400, "seed", "seed must be an integer >= 0 or null, got -1"),
    ({"n": 2}, 400, "n", "n must be 1"),
    ({"messages": []}, 400, "messages", "messages must be a non-empty JSON list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, 400, "messages", "messages[0].role is 'bot'"),
    ({"logprobs": True}, 400, "logprobs", "unsupported field(s) 'logprobs'"),
]


@pytest.mark.parametrize(("change", "status", "param", "named"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_fields_get_an_openai_error_body(router, change, status, param, named):
    body = {"model": EXPERIMENT, "messages": [{"role": "user", "content": "hi"}]} | change
    r = httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=30, trust_env=False)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and named in error["message"]
    assert error["code"] == ("model_not_found" if status == 404 else None)


def test_malformed_json_and_the_openai_clients_exception(router):
    r = httpx.post(f"{router.url}/v1/chat/completions", content=b'{"model": "verdict-ab", "messages": [',
                   headers={"content-type": "application/json"}, timeout=30, trust_env=False)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        oai(router).chat.completions.create(model=EXPERIMENT, messages=[{"role": "user", "content": "hi"}], n=2)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        oai(router).completions.create(model="other", prompt="hi")


def test_bad_input_never_counts_against_an_arm(router):
    before = httpx.get(f"{router.url}/metrics", timeout=10).text
    for change, *_ in BAD:
        httpx.post(f"{router.url}/v1/chat/completions", json={"model": EXPERIMENT, "messages": []} | change,
                   timeout=30, trust_env=False)
    after = httpx.get(f"{router.url}/metrics", timeout=10).text
    assert metric(after, "router_errors_total", kind="server") == metric(before, "router_errors_total", kind="server")
    assert metric(after, "router_errors_total", kind="client") - metric(before, "router_errors_total", kind="client") \
        == len(BAD)


def test_a_client_that_goes_away_cancels_the_upstream_stream(router, triton, heldout):
    """Read 3 token chunks of at most 400 through the router, then close the connection: the model counts the
    cancellation (its counter, not a clock), and the router counts a client error (499), not an arm's."""
    cancelled = triton_counter(triton, CANCELLED_METRIC)
    body = {"model": EXPERIMENT, "prompt": heldout[4]["prompt"], "max_tokens": 400, "ignore_eos": True,
            "stream": True}
    with httpx.Client(base_url=router.url, timeout=60, trust_env=False) as c:
        with c.stream("POST", "/v1/completions", json=body, headers={"X-User-Id": "leaver"}) as r:
            assert r.status_code == 200
            arm = r.headers["x-variant"]
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen += 1
                if seen == 3:
                    break
    wait_for(lambda: triton_counter(triton, CANCELLED_METRIC) == cancelled + 1, 60, "the model counts the cancellation")
    wait_for(lambda: metric(httpx.get(f"{router.url}/metrics", timeout=10).text, "router_errors_total",
                            arm=arm, code="499", kind="client") >= 1, 30, "the router counts the client's leaving")


def test_generation_metrics_per_arm_in_prometheus(router, heldout):
    client = oai(router)
    for i in range(6):
        client.chat.completions.create(model=EXPERIMENT, messages=messages_of(heldout[i]), max_tokens=5,
                                       user=f"metrics-{i}")
    text = httpx.get(f"{router.url}/metrics", timeout=10).text
    for arm in VERSIONS:
        streams = metric(text, "router_time_to_first_token_seconds_count", arm=arm)
        assert streams > 0
        assert metric(text, "router_output_tokens_per_second_count", arm=arm) == streams
        tokens = metric(text, "router_output_tokens_total", arm=arm)
        gaps = metric(text, "router_inter_token_latency_seconds_count", arm=arm)
        assert tokens >= streams and gaps == tokens - streams  # one gap per token after each stream's first


def test_quality_feedback_and_the_report_per_arm(router, heldout):
    from experiments.generation import reference_score as rouge_l
    from experiments.judge import GENERATIVE_METRICS

    client = oai(router)
    row = heldout[5]
    raw = client.chat.completions.with_raw_response.create(model=EXPERIMENT, messages=messages_of(row), max_tokens=12,
                                                           user="rated-1")
    answer, request_id, arm = raw.parse().choices[0].message.content, raw.headers["x-request-id"], raw.headers["x-variant"]
    url = f"{router.url}/v2/experiments/{EXPERIMENT}/feedback"
    scored = httpx.post(url, json={"id": request_id, "reference": row["reference"]}, timeout=30, trust_env=False)
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"id": request_id, "arm": arm, "quality": pytest.approx(rouge_l(answer, row["reference"])),
                             "status": "recorded"}
    again = httpx.post(url, json={"id": request_id, "rating": 1.0}, timeout=30, trust_env=False)
    assert again.status_code == 409
    other = client.completions.with_raw_response.create(model=EXPERIMENT, prompt=row["prompt"], max_tokens=3,
                                                         user="rated-2")
    rated = httpx.post(url, json={"id": other.headers["x-request-id"], "rating": 0.75}, timeout=30, trust_env=False)
    assert rated.json()["quality"] == 0.75
    bad = httpx.post(url, json={"id": request_id, "rating": 1.5}, timeout=30, trust_env=False)
    assert bad.status_code == 400 and "rating must be a number in [0, 1], got 1.5" in bad.json()["error"]

    report = httpx.get(f"{router.url}/v2/experiments/{EXPERIMENT}/report", timeout=60, trust_env=False).json()
    rated_arms = {arm, other.headers["x-variant"]}
    for name in VERSIONS:
        generation = report["arms"][name]["generation"]
        assert generation["streams"] > 0 and generation["ttft_mean_ms"] > 0 and generation["tokens_per_s"] > 0
        assert generation["output_tokens"] >= generation["streams"]
        assert (generation["quality_n"] > 0) == (name in rated_arms)
    judged = report["judge"]["treatments"]["treatment"]
    assert tuple(judged["metrics"]) == GENERATIVE_METRICS
    assert judged["alpha_per_metric"] == pytest.approx(0.05 / (len(GENERATIVE_METRICS) + 1))
    assert judged["metrics"]["ttft_mean"]["n_control"] == report["arms"]["control"]["generation"]["streams"]
    markdown = httpx.get(f"{router.url}/v2/experiments/{EXPERIMENT}/report", params={"format": "markdown"},
                         timeout=60, trust_env=False).text
    assert "| arm | streams | mean TTFT ms |" in markdown
    assert "| ttft mean | mean time to first token" in markdown


def grpc_stream(router: RouterProcess, user: str, prompt: str, **parameters) -> list:
    """One request through the router's gRPC ModelStreamInfer (tritonclient's start_stream / async_stream_infer):
    every response, up to the one with a finish reason (or an error)."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(router.grpc_address)
    responses: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)), headers={"x-user-id": user})
    try:
        tensor = grpcclient.InferInput(GENERATIVE.input_text, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        client.async_stream_infer(EXPERIMENT, [tensor], parameters=parameters)
        out = []
        while True:
            result, error = responses.get(timeout=60)
            out.append(error if error is not None else result)
            if error is not None or result.as_numpy(GENERATIVE.output_finish_reason).reshape(-1)[0]:
                return out
    finally:
        client.stop_stream()
        client.close()


def test_grpc_stream_through_the_router_is_sticky_and_names_its_arm(router, references, heldout):
    prompt = heldout[6]["prompt"]
    assigner = Assigner(experiment_from_dict(spec_stub()))
    seen = set()
    for user in [f"grpc-{i}" for i in range(6)]:
        results = grpc_stream(router, user, prompt, max_tokens=7)
        arms = {r.get_response().parameters["variant"].string_param for r in results}
        arm = assigner.assign(user, None)
        assert arms == {arm}
        text = "".join(r.as_numpy(GENERATIVE.output_text).reshape(-1)[0].decode() for r in results)
        want = expected(references, arm, prompt, 7)
        assert text == want.text and len(results) == len(want.token_ids)  # a response per token
        assert [int(r.as_numpy(GENERATIVE.output_completion_tokens)[0]) for r in results] == \
            list(range(1, len(results) + 1))
        seen.add(arm)
    assert seen == set(VERSIONS)
    refused = grpc_stream(router, "grpc-bad", prompt, max_tokens=0)
    assert len(refused) == 1 and "max_tokens must be an integer >= 1, got 0" in refused[0].message()


def test_rollout_ramps_int8_behind_fp32_on_the_generative_judge(triton, tmp_path):
    """The rollout controller ramps the int8 version (25 -> 50 -> 100 %) behind fp32 while openai clients stream
    through the router; it reads the store's generative unit table (TTFT and error-rate guardrails, users as
    units) and promotes. Margins are wide: on the shared 2-core machine TTFT is mostly scheduling noise."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from experiments.judge import JudgeConfig, Margins, MinSamples
    from experiments.rollout.config import RolloutConfig
    from experiments.rollout.controller import RolloutController
    from experiments.store import open_store

    name = "verdict-ramp"
    store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({**spec(triton), "name": name}))
    cfg = RolloutConfig(steps=(25.0, 50.0, 100.0), guardrails=("error_rate", "ttft_mean"), min_step_requests=40,
                        step_timeout_s=90, poll_s=0.5,
                        judge=JudgeConfig(tune_n=300, min_samples=MinSamples(error_rate=60, ttft_mean=60),
                                          margins=Margins(error_rate=0.05, ttft_mean=100.0)))
    stop, failures = threading.Event(), []

    def user(i: int) -> None:
        client = oai(router)
        n = 0
        while not stop.is_set():
            try:
                client.completions.create(model=name, prompt=f"Review of Film {i}: fine.", max_tokens=3,
                                          user=f"ramp-{i}-{n % 40}")
            except openai.APIError as e:
                failures.append(e)
            n += 1

    with RouterProcess(tmp_path / "experiment.yaml", log_file=tmp_path / "router.log",
                       extra_args=["--store", store, "--log-level", "warning"]) as router:
        with ThreadPoolExecutor(4) as pool:
            for i in range(4):
                pool.submit(user, i)

            async def ramp():
                async with open_store(store) as s:
                    return await asyncio.wait_for(RolloutController(s, name, cfg).run(), 300)

            try:
                outcome = asyncio.run(ramp())
            finally:
                stop.set()
    assert (outcome.result, outcome.percent) == ("complete", 100.0), outcome.reason
    assert outcome.treatment_requests > 80 and not failures
    judged = outcome.looks[-1].metrics if outcome.looks else {}
    assert "ttft_mean" in judged and "label_distribution" not in judged


def test_a_grpc_client_that_cancels_its_stream_stops_the_model(router, triton, heldout):
    """Through the router's gRPC door: 3 responses of at most 400, then the client cancels its stream; the
    model counts the cancellation (its counter, not a clock)."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    cancelled = triton_counter(triton, CANCELLED_METRIC)
    client = grpcclient.InferenceServerClient(router.grpc_address)
    responses: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)),
                        headers={"x-user-id": "grpc-leaver"})
    try:
        tensor = grpcclient.InferInput(GENERATIVE.input_text, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([heldout[7]["prompt"].encode()], dtype=np.object_))
        client.async_stream_infer(EXPERIMENT, [tensor], parameters={"max_tokens": 400, "ignore_eos": True})
        for _ in range(3):
            result, error = responses.get(timeout=60)
            assert error is None
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    wait_for(lambda: triton_counter(triton, CANCELLED_METRIC) == cancelled + 1, 60, "the model counts the cancellation")
