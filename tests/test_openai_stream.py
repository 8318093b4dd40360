"""The OpenAI SSE client (serving.openai_stream) on canned server answers (httpx.MockTransport: the bytes a
server sends, no server): chunks, usage, [DONE], errors before and inside the stream. The same client against
the real peer servers is in tests/test_llm_peers.py and tests/test_llm_bench_e2e.py."""

from __future__ import annotations

import json

import httpx
import pytest

from serving.errors import InferenceError
from serving.llm_client import GenerationRejected
from serving.openai_stream import CHAT_PATH, chat_request, stream_chat, timed_chat


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> dict:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}


def sse_body(*events) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def client_answering(status: int, body: bytes, content_type: str = "text/event-stream") -> tuple[httpx.Client, list]:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.Client(base_url="http://peer", transport=httpx.MockTransport(handler)), seen


def test_events_carry_content_finish_and_usage_and_end_at_done():
    body = sse_body(chunk("", role="assistant"), chunk("Fresh"), chunk(": the"), chunk(finish="length"), USAGE,
                    "[DONE]", chunk("after done"))
    client, seen = client_answering(200, body)
    events = list(stream_chat(client, chat_request("m", [{"role": "user", "content": "hi"}], max_tokens=5)))
    assert [e.content for e in events] == ["", "Fresh", ": the", "", ""]  # nothing after [DONE]
    assert [e.finish_reason for e in events] == [None, None, None, "length", None]
    assert events[-1].usage == USAGE["usage"] and all(e.usage is None for e in events[:-1])
    assert all(a.received_s <= b.received_s for a, b in zip(events, events[1:], strict=False))
    request = json.loads(seen[0].content)
    assert seen[0].url.path == CHAT_PATH and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True} and request["max_tokens"] == 5


def test_timed_chat_takes_tokens_from_usage_and_ttft_from_the_first_content():
    body = sse_body(chunk("", role="assistant"), chunk("a b "), chunk("c"), chunk(finish="stop"), USAGE, "[DONE]")
    client, _ = client_answering(200, body)
    record, result = timed_chat(client, chat_request("m", [], max_tokens=5))
    assert result.text == "a b c" and result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (7, 5)
    assert record.output_tokens == 5 and len(record.content_s) == 2  # 5 tokens arrived in 2 chunks with content
    assert record.sent_s < record.content_s[0] <= record.last_s


def test_without_usage_the_tokens_are_the_chunks_with_content():
    client, _ = client_answering(200, sse_body(chunk("x"), chunk("y"), chunk(finish="stop"), "[DONE]"))
    record, result = timed_chat(client, chat_request("m", [], max_tokens=5))
    assert record.output_tokens == 2 and result.completion_tokens is None


@pytest.mark.parametrize(("status", "error"), [(400, GenerationRejected), (404, GenerationRejected),
                                               (500, InferenceError)])
def test_an_error_answer_raises_with_the_servers_message(status, error):
    body = json.dumps({"error": {"message": "max_tokens must be an integer >= 1, got 0", "type": "x"}}).encode()
    client, _ = client_answering(status, body, "application/json")
    with pytest.raises(error, match=f"{status} from {CHAT_PATH}: max_tokens must be an integer >= 1, got 0") as e:
        list(stream_chat(client, chat_request("m", [], max_tokens=0)))
    assert (e.type is GenerationRejected) == (status < 500)


def test_a_plain_error_string_and_a_non_json_body_are_reported_too():
    client, _ = client_answering(400, b'{"error": "bad model"}', "application/json")
    with pytest.raises(GenerationRejected, match="bad model"):
        list(stream_chat(client, {}))
    client, _ = client_answering(503, b"upstream down", "text/plain")
    with pytest.raises(InferenceError, match="503 .*upstream down"):
        list(stream_chat(client, {}))


def test_an_error_inside_the_stream_or_a_missing_done_raises():
    client, _ = client_answering(200, sse_body(chunk("x"), {"error": {"message": "generation failed: boom"}}))
    events = stream_chat(client, {})
    assert next(events).content == "x"
    with pytest.raises(InferenceError, match="generation failed: boom"):
        next(events)
    client, _ = client_answering(200, sse_body(chunk("x"), chunk(finish="stop")))
    with pytest.raises(InferenceError, match=r"ended without data: \[DONE\]"):
        list(stream_chat(client, {}))


def test_sse_comments_and_event_fields_are_parsed():
    payload = json.dumps(chunk("z"))
    body = f": keep-alive\n\nevent: message\ndata: {payload}\n\ndata: [DONE]\n\n".encode()
    client, _ = client_answering(200, body)
    assert [e.content for e in stream_chat(client, {})] == ["z"]
