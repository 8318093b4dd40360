"""End to end: the tiny causal LM exported and published by the real export code, served by the real tritonserver
as a decoupled python model, streamed over HTTP generate_stream and gRPC ModelStreamInfer (tritonclient).

One server per module, two models of the same fp32 version: ``verdict-llm`` (continuous batching) and
``verdict-llm-threads`` (a thread per stream). Answers are compared with the in-process decode loop on the
same version folder; cancellation is proven with the model's own counters, not with timings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from export.config import ExportConfig
from export.contract import GENERATIVE
from export.decoding import SamplingParams
from export.generate import Generator
from export.publish_causal import publish_causal
from export.triton_llm.model import CANCELLED_METRIC, STEPS_METRIC, TOKENS_METRIC
from serving.llm_client import GenerationRejected, TritonLLM
from serving.triton import TritonServer
from tunestack.procs import wait_for

pytestmark = pytest.mark.e2e

MODEL = GENERATIVE.default_model_name
THREADS_MODEL = f"{MODEL}-threads"
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def repository(tiny_causal_onnx_dir, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("llm") / "model_repository"
    for name, batching in ((MODEL, "continuous"), (THREADS_MODEL, "none")):
        cfg = ExportConfig(task="causal-lm", repository=repo, model_name=name, decode_batching=batching, max_sequences=4)
        assert publish_causal(tiny_causal_onnx_dir, "fp32", cfg).name == "1"
    return repo


@pytest.fixture(scope="module")
def server(repository):
    with TritonServer(repository, startup_timeout=120) as server:  # every model with a config.pbtxt
        yield server


@pytest.fixture(scope="module")
def reference(repository) -> Generator:
    """The decode loop in-process on the served version folder."""
    return Generator.from_folder(repository / MODEL / "1")


@pytest.fixture(scope="module")
def heldout(tiny_causal_onnx_dir) -> list[dict]:
    return [json.loads(line) for line in (tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()]


def client(server, protocol: str, model: str = MODEL) -> TritonLLM:
    return TritonLLM(server.grpc_url if protocol == "grpc" else server.http_address, protocol, model)


def counter(server, name: str, model: str = MODEL) -> float:
    text = httpx.get(server.metrics_url, timeout=10).text
    found = re.search(rf'^{name}{{model="{re.escape(model)}",version="1"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stream_is_the_decode_loops_tokens(server, reference, heldout, protocol):
    prompt = heldout[0]["prompt"]
    expected = reference.generate(reference.encode(prompt), SamplingParams(max_tokens=12))
    with client(server, protocol) as llm:
        chunks = list(llm.stream(prompt, max_tokens=12))
    assert [c.completion_tokens for c in chunks] == list(range(1, len(expected.token_ids) + 1))
    assert "".join(c.text for c in chunks) == expected.text
    assert {c.prompt_tokens for c in chunks} == {len(reference.encode(prompt))}
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + [expected.finish_reason]
    assert {c.model_version for c in chunks} == {"1"}


def test_generate_endpoint_answers_with_one_response(server, reference, heldout):
    prompt = heldout[1]["prompt"]
    expected = reference.generate(reference.encode(prompt), SamplingParams(max_tokens=9))
    url = f"{server.http_url}/v2/models/{MODEL}/generate"
    whole = httpx.post(url, json={"text_input": prompt, "max_tokens": 9, "stream": False}, timeout=60)
    assert whole.status_code == 200
    body = whole.json()
    assert (body["text_output"], body["completion_tokens"], body["finish_reason"]) == \
        (expected.text, len(expected.token_ids), expected.finish_reason)
    streamed = httpx.post(url, json={"text_input": prompt, "max_tokens": 9}, timeout=60).json()
    assert "exactly 1 response" in streamed["error"]  # /generate needs "stream": false for several tokens


def test_chat_messages_are_rendered_with_the_models_template(server, reference, heldout):
    row = heldout[2]
    messages = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}]
    expected = reference.generate(reference.encode(row["prompt"]), SamplingParams(max_tokens=8))
    with client(server, "grpc") as llm:
        done = llm.generate(messages=messages, max_tokens=8)
    assert (done.text, done.prompt_tokens) == (expected.text, len(reference.encode(row["prompt"])))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sampling_parameters_reach_the_model(server, reference, heldout, protocol):
    prompt = heldout[3]["prompt"]
    ids = reference.encode(prompt)
    with client(server, protocol) as llm:
        seeded = [llm.generate(prompt, max_tokens=16, temperature=1.0, top_p=0.9, seed=s) for s in (7, 7, 8)]
        assert seeded[0] == seeded[1] and seeded[0].text != seeded[2].text
        assert seeded[0].text == reference.generate(ids, SamplingParams(16, 1.0, 0.9, seed=7)).text
        full = reference.generate(ids, SamplingParams(max_tokens=24, temperature=1.0, seed=3)).text
        stop = full[5:8]
        stopped = llm.generate(prompt, stop=[stop, "@@@"], max_tokens=24, temperature=1.0, seed=3)
        assert (stopped.text, stopped.finish_reason) == (full[: full.find(stop)], "stop")
        capped = llm.generate(prompt, max_tokens=5, ignore_eos=True)
        assert (capped.completion_tokens, capped.finish_reason) == (5, "length")


@pytest.mark.parametrize(("body", "status", "named"), [
    ({"max_tokens": 0}, 400, "max_tokens must be an integer >= 1, got 0"),
    ({"temperature": "hot", "top_p": 2}, 400, "temperature must be a number in [0, 2] (0: greedy), got 'hot'"),
    ({"max_token": 5}, 400, "unknown parameter(s) 'max_token'"),
    ({"text_input": None, "messages": "[{\"role\": \"bot\"}]"}, 400, "messages[0].role is 'bot'"),
    ({"max_tokens": [1, 2]}, 400, "parameter 'max_tokens' has invalid type"),  # refused by Triton itself
])
def test_a_bad_request_gets_400_naming_the_field(server, heldout, body, status, named):
    request = {k: v for k, v in ({"text_input": heldout[0]["prompt"]} | body).items() if v is not None}
    response = httpx.post(f"{server.http_url}/v2/models/{MODEL}/generate_stream", json=request, timeout=60)
    assert response.status_code == status
    assert named in json.loads(response.text.removeprefix("data: "))["error"]


def test_a_bad_request_fails_alone_among_concurrent_streams(server, reference, heldout):
    prompts = [row["prompt"] for row in heldout[:6]]

    def one(i: int):
        with client(server, PROTOCOLS[i % 2]) as llm:
            try:
                return llm.generate(prompts[i], max_tokens=-1 if i in (1, 4) else 10)
            except GenerationRejected as e:
                return e

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for i, result in enumerate(results):
        if i in (1, 4):  # over gRPC (i=1) too: the stream's message says it was refused
            assert isinstance(result, GenerationRejected) and "max_tokens must be an integer >= 1, got -1" in str(result)
        else:
            assert result.text == reference.generate(reference.encode(prompts[i]), SamplingParams(max_tokens=10)).text


@pytest.mark.parametrize("model", [MODEL, THREADS_MODEL])
def test_concurrent_streams_each_get_the_tokens_they_get_alone(server, reference, heldout, model):
    prompts = [row["prompt"] for row in heldout[:8]]
    lengths = [4, 17, 9, 23, 6, 12, 30, 15]
    before = counter(server, TOKENS_METRIC, model), counter(server, STEPS_METRIC, model)

    def one(i: int) -> list[str]:
        with client(server, PROTOCOLS[i % 2], model) as llm:
            return [c.text for c in llm.stream(prompts[i], max_tokens=lengths[i], ignore_eos=True)]

    with ThreadPoolExecutor(len(prompts)) as pool:  # 8 streams, 4 decoded at once (max_sequences), the rest join
        streamed = list(pool.map(one, range(len(prompts))))
    for prompt, length, texts in zip(prompts, lengths, streamed, strict=True):
        alone = list(reference.stream(reference.encode(prompt), SamplingParams(max_tokens=length, ignore_eos=True)))
        assert texts == [t.text for t in alone]
    tokens, steps = counter(server, TOKENS_METRIC, model) - before[0], counter(server, STEPS_METRIC, model) - before[1]
    assert tokens == sum(lengths)
    assert steps == tokens if model == THREADS_MODEL else 0 < steps <= tokens  # a step serves one or several streams
    print(f"{model}: {tokens:.0f} tokens in {steps:.0f} steps")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_client_that_goes_away_stops_its_generation(server, heldout, protocol):
    """The client reads 3 tokens of at most 400 and leaves; the model stops that stream (its counters and log
    say so), and the tokens counter then grows by exactly what later requests generate."""
    cancelled = counter(server, CANCELLED_METRIC)
    with client(server, protocol) as llm:
        for chunk in llm.stream(heldout[4]["prompt"], max_tokens=400, ignore_eos=True, request_id=f"leaver-{protocol}"):
            if chunk.completion_tokens == 3:
                break
        wait_for(lambda: counter(server, CANCELLED_METRIC) == cancelled + 1, 60, "the model counts the cancellation")
        line = re.search(rf'request leaver-{protocol} cancelled after (\d+) tokens', server.log_path.read_text())
        assert line and 3 <= int(line.group(1)) < 400
        after = counter(server, TOKENS_METRIC)
        assert llm.generate(heldout[5]["prompt"], max_tokens=7, ignore_eos=True).completion_tokens == 7
    assert counter(server, TOKENS_METRIC) == after + 7  # nothing more from the cancelled stream


def test_launcher_serves_a_causal_lm(repository, heldout):
    cmd = [sys.executable, "-m", "serving", "triton", "--repository", str(repository), "--model", MODEL,
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        for line in launcher.stdout:
            lines.append(line)
            if line.startswith("Triton ready"):
                break
        grpc = re.search(r"grpc (\S+:\d+)", "".join(lines))
        assert grpc, "".join(lines)
        with TritonLLM(grpc.group(1), "grpc") as llm:
            assert llm.generate(heldout[0]["prompt"], max_tokens=3, ignore_eos=True).completion_tokens == 3
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its tritonserver, if the test failed first
        except ProcessLookupError:
            pass
        launcher.wait()
