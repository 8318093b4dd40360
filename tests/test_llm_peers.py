"""The generation bench's peers on the tiny causal LM: the request they accept, their engines (transformers
generate + TextIteratorStreamer; onnxruntime-genai on a model its builder made from the merged folder) giving
the decode loop's greedy text, and the OpenAI app streaming it through the SSE client (in process, through
Starlette's test client: the same httpx interface as a socket)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from export.decoding import SamplingParams
from export.generate import Generator
from serving.llm_client import GenerationRejected
from serving.llm_peers.app import create_app
from serving.llm_peers.openai_api import ChatRequest, RequestError, parse_chat_request
from serving.openai_stream import CHAT_PATH, chat_request, stream_chat, timed_chat

MODEL = "tiny"


def messages_of(row: dict) -> list[dict]:
    return [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}]


@pytest.fixture(scope="module")
def heldout(tiny_causal_onnx_dir) -> list[dict]:
    return [json.loads(line) for line in (tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_causal_onnx_dir) -> Generator:
    return Generator.from_folder(tiny_causal_onnx_dir)


@pytest.fixture(scope="module")
def merged_dir(tiny_causal_onnx_dir):
    return tiny_causal_onnx_dir.parent / "merged"


@pytest.fixture(scope="module")
def ortgenai_dir(merged_dir, tmp_path_factory):
    from serving.llm_peers.ortgenai_build import build_in_child

    out = tmp_path_factory.mktemp("ortgenai") / "fp32"
    return build_in_child(merged_dir, out, "fp32", out.parent / "build.log")


@pytest.fixture(scope="module")
def engines(merged_dir, ortgenai_dir) -> dict:
    from serving.llm_peers.hf_engine import TransformersEngine
    from serving.llm_peers.ortgenai_engine import OrtGenaiEngine

    return {"transformers": TransformersEngine(merged_dir, 1), "ortgenai": OrtGenaiEngine(ortgenai_dir, 1)}


def test_a_request_names_every_problem_at_once():
    body = {"model": MODEL, "messages": [{"role": "bot", "content": "hi"}], "max_tokens": 0, "temperature": 3,
            "top_p": 0, "stream": "yes", "stream_options": {"include_usage": 1}, "ignore_eos": "no", "seed": 1,
            "n": 2}
    with pytest.raises(RequestError) as e:
        parse_chat_request(body, MODEL)
    message = str(e.value)
    assert e.value.status == 400 and e.value.body()["error"]["type"] == "invalid_request_error"
    for expected in ("unsupported field(s) 'n', 'seed'", "messages[0].role is 'bot'", "max_tokens must be an integer "
                     ">= 1, got 0", "temperature must be a number in [0, 2] (0: greedy), got 3", "top_p must be a "
                     "number in (0, 1], got 0", "stream must be true or false, got 'yes'",
                     "stream_options.include_usage must be true or false, got 1", "ignore_eos must be true or false"):
        assert expected in message


def test_a_request_for_another_model_is_a_404_and_defaults_fill_the_rest():
    with pytest.raises(RequestError) as e:
        parse_chat_request({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, MODEL)
    assert e.value.status == 404 and "'gpt-4o' does not exist; this server serves 'tiny'" in str(e.value)
    request = parse_chat_request({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "max_completion_tokens": 9, "stream": True,
                                  "stream_options": {"include_usage": True}}, MODEL)
    assert request == ChatRequest([{"role": "user", "content": "hi"}], max_tokens=9, stream=True, include_usage=True)
    with pytest.raises(RequestError, match="must be a JSON object, got list"):
        parse_chat_request([], MODEL)


@pytest.mark.parametrize("engine", ["transformers", "ortgenai"])
def test_an_engine_gives_the_decode_loops_greedy_text_and_counts(engines, reference, heldout, engine):
    for row in heldout[:3]:
        ids = reference.encode(row["prompt"])
        expected = reference.generate(ids, SamplingParams(max_tokens=10))
        generation = engines[engine].start(ChatRequest(messages_of(row), max_tokens=10))
        assert "".join(generation) == expected.text
        assert generation.prompt_tokens == len(ids) and generation.completion_tokens == len(expected.token_ids)
        assert generation.finish_reason == expected.finish_reason


@pytest.mark.parametrize("engine", ["transformers", "ortgenai"])
def test_ignore_eos_generates_exactly_max_tokens(engines, heldout, engine):
    generation = engines[engine].start(ChatRequest(messages_of(heldout[0]), max_tokens=17, ignore_eos=True))
    list(generation)
    assert generation.completion_tokens == 17 and generation.finish_reason == "length"


@pytest.mark.parametrize("engine", ["transformers", "ortgenai"])
def test_the_app_streams_openai_chunks_the_client_reads(engines, reference, heldout, engine):
    client = TestClient(create_app(engines[engine], MODEL))
    row = heldout[1]
    expected = reference.generate(reference.encode(row["prompt"]), SamplingParams(max_tokens=12, ignore_eos=True))
    body = chat_request(MODEL, messages_of(row), max_tokens=12, ignore_eos=True)
    events = list(stream_chat(client, body))
    assert events[0].content == "" and events[-1].usage["completion_tokens"] == 12
    assert events[-2].finish_reason == "length" and all(e.content for e in events[1:-2])
    record, result = timed_chat(client, body)
    assert result.completion_tokens == record.output_tokens == 12
    assert result.prompt_tokens == len(reference.encode(row["prompt"]))
    assert result.text == "".join(e.content for e in events)
    assert result.text.startswith(reference.generate(reference.encode(row["prompt"]),
                                                      SamplingParams(max_tokens=12)).text)
    assert len(expected.token_ids) == 12
    whole = client.post(CHAT_PATH, json={"model": MODEL, "messages": messages_of(row), "max_tokens": 5}).json()
    assert whole["object"] == "chat.completion" and whole["usage"]["completion_tokens"] <= 5
    assert whole["choices"][0]["message"]["content"] == reference.generate(
        reference.encode(row["prompt"]), SamplingParams(max_tokens=5)).text


def test_the_app_answers_bad_requests_with_a_4xx_naming_the_field(engines):
    client = TestClient(create_app(engines["ortgenai"], MODEL))
    answer = client.post(CHAT_PATH, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                          "max_tokens": -2, "stream": True})
    assert answer.status_code == 400
    assert "max_tokens must be an integer >= 1, got -2" in answer.json()["error"]["message"]
    answer = client.post(CHAT_PATH, content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]["message"]
    long = [{"role": "user", "content": "great film " * 400}]
    with pytest.raises(GenerationRejected, match="exceeds the model's context of 512 tokens"):
        list(stream_chat(client, chat_request(MODEL, long, max_tokens=8)))
    assert client.post(CHAT_PATH, json={"model": "other", "messages": long}).status_code == 404
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
