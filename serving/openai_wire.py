"""OpenAI's wire format for completions, as every OpenAI-compatible server of the stack writes it: the error
object, the completion and chunk objects, ``usage`` and server-sent events.

Two kinds of completion share it: a chat completion (``POST /v1/chat/completions``: ``chat.completion``, and
``chat.completion.chunk`` whose choice carries a ``delta``) and a text completion (``POST /v1/completions``:
``text_completion`` for both, whose choice carries ``text``). ``Answer`` writes one completion's objects, all
with one id and creation time; ``extra`` adds fields to each of them (the router names the arm so).
"""

from __future__ import annotations

import json
import time
import uuid

DEFAULT_MAX_TOKENS = 64
"""``max_tokens`` when a request gives none."""
DONE = "[DONE]"
"""The ``data`` of the event that ends an OpenAI stream."""


class RequestError(ValueError):
    """A request a server refuses: the HTTP status, the message naming the field and its value, the field
    (``param``) and OpenAI's error ``code`` (e.g. ``model_not_found``), when known."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        """OpenAI's error object: ``invalid_request_error`` for the sender's mistakes (4xx), else
        ``server_error``."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


class Answer:
    """The JSON objects of one completion's answer (see the module docstring); ``chat``: a chat completion,
    else a text completion."""

    def __init__(self, model: str, chat: bool = True, extra: dict | None = None):
        self.model, self.chat, self.extra = model, chat, extra or {}
        self.id, self.created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, **self.extra}

    @property
    def _chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def chunk(self, delta: dict, finish_reason: str | None = None, usage: dict | None = None,
              with_usage: bool = False) -> dict:
        """A chunk with one choice; ``delta``: the chat delta (``{"content": ...}``; a text completion takes its
        ``content`` as the choice's ``text``). ``usage: null`` is on it when usage is reported at the end."""
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._head(self._chunk_kind), "choices": [choice]}
        return chunk | ({"usage": usage} if with_usage else {})

    def usage_chunk(self, usage: dict) -> dict:
        """The last chunk when ``include_usage``: no choices, the usage."""
        return {**self._head(self._chunk_kind), "choices": [], "usage": usage}

    def completion(self, text: str, finish_reason: str, usage: dict) -> dict:
        """A whole ``chat.completion`` or ``text_completion``."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._head(kind), "usage": usage, "choices": [choice]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict | str) -> str:
    """One server-sent event whose ``data`` is ``data`` (JSON for a dict)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
