"""The OpenAI chat completions API as the peers speak it: the request they accept and the JSON they answer.

A request (``POST /v1/chat/completions``) is a JSON object with ``model`` (the served name), ``messages``
(``[{"role": "system"|"user"|"assistant", "content": "..."}]``, rendered with the model's chat template),
``max_tokens`` (or ``max_completion_tokens``; default 64), ``temperature`` (0: greedy, the default),
``top_p``, ``stream`` (default false), ``stream_options.include_usage`` and vLLM's ``ignore_eos`` (generate
exactly ``max_tokens``: benchmarks). Any other field, and every bad value, is named in one 400 answer
(``{"error": {"message", "type": "invalid_request_error", "param"}}``, OpenAI's error shape); a ``model``
the server does not serve is a 404.

A streamed answer is server-sent events, each ``data:`` one ``chat.completion.chunk``: the assistant role
first, then a chunk per piece of text, a chunk with the ``finish_reason``, with ``include_usage`` a last
chunk with no choices and the ``usage``, then ``data: [DONE]``. A whole answer is one ``chat.completion``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from export.chat import parse_messages
from export.decoding import sampling_problems
from export.errors import GenerationError
from serving.openai_wire import DEFAULT_MAX_TOKENS, Answer, RequestError, sse, usage  # noqa: F401 - the peers' API

FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream",
          "stream_options", "ignore_eos", "user")
"""The request fields the peers accept (``user``, OpenAI's end-user id, is accepted and not used)."""


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat completion request."""

    messages: list[dict[str, str]]
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False


def _bool_problem(name: str, value) -> list[str]:
    return [] if isinstance(value, bool) else [f"{name} must be true or false, got {value!r}"]


def parse_chat_request(body: object, model: str) -> ChatRequest:
    """The request in ``body`` (decoded JSON) for the served ``model``; ``RequestError`` naming every problem."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    problems = []
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        problems.append(f"unsupported field(s) {', '.join(map(repr, unknown))}; this server accepts: {', '.join(FIELDS)}")
    if body.get("model") != model:
        raise RequestError(404, f"model {body.get('model')!r} does not exist; this server serves {model!r}", "model",
                           "model_not_found")
    messages = []
    try:
        messages = parse_messages(json.dumps(body.get("messages")), "messages")
    except GenerationError as e:
        problems.append(str(e))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
    values = {"max_tokens": max_tokens, "temperature": body.get("temperature", 0.0), "top_p": body.get("top_p", 1.0),
              "seed": None, "stop": (), "ignore_eos": body.get("ignore_eos", False)}
    problems += sampling_problems(values)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        problems.append(f"stream_options must be an object with only include_usage, got {options!r}")
        options = {}
    problems += _bool_problem("stream", body.get("stream", False))
    problems += _bool_problem("stream_options.include_usage", options.get("include_usage", False))
    if problems:
        raise RequestError(400, "invalid chat completion request:\n  - " + "\n  - ".join(problems))
    return ChatRequest(messages, values["max_tokens"], float(values["temperature"]), float(values["top_p"]),
                       values["ignore_eos"], body.get("stream", False), options.get("include_usage", False))
