"""Stream a chat completion from an OpenAI-compatible server (``POST /v1/chat/completions`` with ``stream: true``,
server-sent events): the client of the generation bench's peers, and of any router arm that speaks the same API.

    with httpx.Client(base_url="http://127.0.0.1:8090", timeout=60) as client:
        body = chat_request("verdict-llm", [{"role": "user", "content": "hi"}], max_tokens=32)
        for event in stream_chat(client, body):
            print(event.content, end="", flush=True)
        record, result = timed_chat(client, body)    # figures: tunestack.bench.streams

``chat_request`` asks for ``stream_options.include_usage``, so the stream's last chunk carries ``usage`` (the
server's token counts, which the figures use). Each event's ``data`` is one ``chat.completion.chunk`` JSON
object (``choices[0].delta.content``, ``choices[0].finish_reason``; a usage chunk has no choices), and
``data: [DONE]`` ends the stream (SSE parsing: ``httpx-sse``). An answer other than 200 raises
``GenerationRejected`` for a 4xx (the sender's mistake) or ``InferenceError`` otherwise, with the server's
message (OpenAI's ``{"error": {"message": ...}}`` or a plain ``{"error": "..."}``); so does an ``error``
object sent inside the stream, or a stream that ends without ``[DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from httpx_sse import connect_sse

from serving.errors import InferenceError
from serving.llm_client import GenerationRejected
from serving.openai_wire import DONE
from tunestack.bench.streams import StreamRecord, StreamTimer

CHAT_PATH = "/v1/chat/completions"
"""The OpenAI chat completions endpoint, relative to the server's base URL."""


@dataclass(frozen=True)
class ChatEvent:
    """One chunk of the stream."""

    content: str
    """The text this chunk adds ('' for the role, finish and usage chunks)."""
    finish_reason: str | None
    """``stop`` or ``length`` on the chunk that ends the choice, else None."""
    usage: dict | None
    """``{"prompt_tokens", "completion_tokens", "total_tokens"}`` on the usage chunk, else None."""
    received_s: float
    """``time.perf_counter()`` when the client had it."""
    variant: str | None = None
    """The arm of the A/B router that served it, when the chunk names one (``"tunestack": {"arm": ...}``)."""


@dataclass(frozen=True)
class ChatResult:
    """A whole streamed completion."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    """None when the server sent no usage chunk."""


def chat_request(model: str, messages: Sequence[dict], *, max_tokens: int, temperature: float = 0.0,
                 **extra) -> dict:
    """A streaming chat request body with usage reported at the end; ``extra``: other fields, such as
    vLLM's ``ignore_eos``."""
    return {"model": model, "messages": list(messages), "max_tokens": max_tokens, "temperature": temperature,
            "stream": True, "stream_options": {"include_usage": True}, **extra}


def _error_message(body: str) -> str:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body
    return error.get("message", json.dumps(error)) if isinstance(error, dict) else str(error)


def _event(data: dict, received_s: float) -> ChatEvent:
    if "error" in data:
        raise InferenceError(f"error inside the stream: {_error_message(json.dumps(data))}")
    choices = data.get("choices") or []
    choice = choices[0] if choices else {}
    content = (choice.get("delta") or {}).get("content") or ""
    tag = data.get("tunestack")
    variant = tag.get("arm") if isinstance(tag, dict) else None
    return ChatEvent(content, choice.get("finish_reason"), data.get("usage"), received_s,
                     variant if isinstance(variant, str) else None)


def raise_for_answer(response: httpx.Response, path: str = CHAT_PATH) -> None:
    """Raise for an answer other than 200: ``GenerationRejected`` for a 4xx (the sender's mistake), else
    ``InferenceError``, with the server's message."""
    if response.status_code != 200:
        response.read()
        error = GenerationRejected if 400 <= response.status_code < 500 else InferenceError
        raise error(f"{response.status_code} from {path}: {_error_message(response.text)}")


@contextmanager
def open_chat(client: httpx.Client, body: dict, path: str = CHAT_PATH, headers: dict[str, str] | None = None,
              check: bool = True) -> Iterator[tuple[httpx.Response, Iterator[ChatEvent]]]:
    """POST ``body`` to ``path`` (with ``headers``) and give the answer's response (its headers, such as the
    router's ``X-Variant``) and its chunks as they arrive; an answer other than 200 raises first
    (``raise_for_answer``), or, with ``check`` False, when the chunks are read."""
    with connect_sse(client, "POST", path, json=body, headers=dict(headers or {})) as source:
        if check:
            raise_for_answer(source.response, path)
        yield source.response, _events(source, path)


def _events(source, path: str) -> Iterator[ChatEvent]:
    raise_for_answer(source.response, path)
    for sse in source.iter_sse():
        received = time.perf_counter()
        if sse.data == DONE:
            return
        if sse.data:
            yield _event(json.loads(sse.data), received)
    raise InferenceError(f"the stream from {path} ended without data: {DONE}")


def stream_chat(client: httpx.Client, body: dict, path: str = CHAT_PATH) -> Iterator[ChatEvent]:
    """POST ``body`` to ``path`` and yield each chunk as it arrives (see the module docstring)."""
    with open_chat(client, body, path) as (_response, events):
        yield from events


def timed_chat(client: httpx.Client, body: dict, path: str = CHAT_PATH) -> tuple[StreamRecord, ChatResult]:
    """Stream ``body`` to the end: its timing record (output tokens: the server's usage, else the chunks with
    content) and the completion."""
    timer = StreamTimer()
    text, finish, usage = [], None, None
    for event in stream_chat(client, body, path):
        timer.chunk(bool(event.content), event.received_s)
        text.append(event.content)
        finish = event.finish_reason or finish
        usage = event.usage or usage
    usage = usage or {}
    record = timer.finish(usage.get("completion_tokens"))
    return record, ChatResult("".join(text), finish, usage.get("prompt_tokens"), usage.get("completion_tokens"))
