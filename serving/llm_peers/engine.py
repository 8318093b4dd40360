"""What a peer's engine does for the OpenAI app: start one completion for a checked request, then stream its text.

An engine (``TransformersEngine``, ``OrtGenaiEngine``) loads its model once; ``start(request)`` renders and
tokenizes the messages (a prompt that leaves no room in the model's context is refused as the sender's
mistake, before any work) and returns a ``Generation``; iterating it runs the decoding and yields pieces of
text as they become final. After the iteration its ``completion_tokens`` (the EOS token counts, as it does
on Triton) and ``finish_reason`` (``stop``: the EOS token; ``length``: ``max_tokens``) are set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from export.decoding import FINISH_LENGTH, FINISH_STOP
from serving.llm_peers.openai_api import ChatRequest, RequestError


class Generation(Protocol):
    """One completion being generated."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    def __iter__(self) -> Iterator[str]:
        """Pieces of the completion's text, as they become final (never empty)."""
        ...


class Engine(Protocol):
    """A loaded model that starts completions."""

    def start(self, request: ChatRequest) -> Generation:
        ...


def check_room(prompt_tokens: int, request: ChatRequest, context: int) -> None:
    """Refuse a prompt whose tokens plus ``max_tokens`` exceed the model's context."""
    if prompt_tokens + request.max_tokens > context:
        raise RequestError(400, f"messages render to {prompt_tokens} prompt tokens; with max_tokens "
                                f"{request.max_tokens} that exceeds the model's context of {context} tokens",
                           "messages")


def finish_reason(last_token: int | None, eos: frozenset[int], request: ChatRequest) -> str:
    """``stop`` when the completion ended on an EOS token it was allowed to stop at, else ``length``."""
    return FINISH_STOP if last_token in eos and not request.ignore_eos else FINISH_LENGTH
