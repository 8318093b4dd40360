"""Streaming from a served causal LM: Triton's ``generate_stream`` (HTTP server-sent events), one token an event.

    stream = await upstream.open(target, ask.upstream_body(), timeouts)    # the first token is in
    async for event in stream.rest(deadline): ...                           # the others as they come
    stream.close()                                                          # early: the model stops

``open`` returns once the model's first response has arrived, so a failure before the first token (a
connection refused, a 5xx, no first token within ``GenerationTimeouts.first_token_s``) is raised there, where
the routing core can still fall back, and is classified as the classifier path's (``http_upstream.classify``,
the same circuit breaker): Triton's 4xx, and a response whose error starts with the model's
``REJECTION_PREFIX``, are the caller's ``UpstreamRejected``; the rest are the arm's
``UpstreamError``/``UpstreamTimeout``. After it, each token must come within ``token_s`` of the one before
(and before ``rest``'s ``deadline``, when given: a whole non-streamed completion), else ``UpstreamTimeout``.
Closing a stream early closes its connection: Triton marks the request cancelled and the model stops
generating it before its next token (``export/triton_llm/model.py``). One ``StreamPool``
(``serving.router.httpstream``: keep-alive connections, ``httptools`` parsing, one timer per wait) per
Triton; a stream read to its end leaves its connection in the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from experiments.spec import GenerationTimeouts
from export.contract import GENERATIVE
from export.llm_request import REJECTION_PREFIX
from serving.router.breaker import CircuitBreaker
from serving.router.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from serving.router.http_upstream import Target, classify, error_message
from serving.router.httpstream import StreamAnswer, StreamPool


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One response of the model's stream: one generated token."""

    text: str
    """The text this token makes final ('' while the model holds text back)."""
    completion_tokens: int
    """Tokens generated so far."""
    prompt_tokens: int
    finish_reason: str | None
    """``stop`` or ``length`` on the last response, else None."""
    at: float
    """``time.perf_counter()`` when the router had it."""


def token_event(data: dict, at: float) -> TokenEvent:
    """A ``TokenEvent`` from one ``generate_stream`` event's JSON."""
    return TokenEvent(str(data.get(GENERATIVE.output_text, "")), int(data[GENERATIVE.output_completion_tokens]),
                      int(data[GENERATIVE.output_prompt_tokens]), data.get(GENERATIVE.output_finish_reason) or None, at)


class GenStream:
    """An open ``generate_stream``: ``first`` (already read), then ``rest()``; ``close()`` ends it (see the module
    docstring). ``rest()`` raises ``UpstreamError`` for an error the model sends, or a stream that breaks off,
    and ``UpstreamTimeout`` for a token that does not come in time."""

    def __init__(self, target: Target, answer: StreamAnswer, first: TokenEvent, token_s: float):
        self.target, self._answer, self.first, self.token_s = target, answer, first, token_s
        self.finished = first.finish_reason is not None
        """The model's final response was read."""

    async def rest(self, deadline: float | None = None) -> AsyncIterator[TokenEvent]:
        """The tokens after the first; ``deadline`` (loop time): the end of a whole completion, else none."""
        last, loop = self.first, asyncio.get_running_loop()
        while last.finish_reason is None:
            wait = loop.time() + self.token_s
            try:
                data = await self._answer.next_event(wait if deadline is None else min(wait, deadline))
            except TimeoutError:
                whole = deadline is not None and loop.time() >= deadline
                raise UpstreamTimeout(f"{self.target} did not finish the completion in time" if whole else
                                      f"{self.target} sent no token for {self.token_s:g} s after "
                                      f"{last.completion_tokens}") from None
            except OSError as e:
                raise UpstreamError(f"{self.target} broke off the stream after {last.completion_tokens} tokens: "
                                    f"{type(e).__name__}: {e}") from None
            if data is None:
                raise UpstreamError(f"{self.target} ended the stream after {last.completion_tokens} tokens "
                                    "without a final response")
            event = _event(self.target, data)
            if event is not None:
                last = event
                self.finished = event.finish_reason is not None
                yield event

    async def drain(self) -> None:
        """After the final response: read the answer's end (Triton ends it at once), so ``close`` keeps the
        connection for the next stream."""
        if self.finished and not self._answer.complete:
            try:
                while await self._answer.next_event(asyncio.get_running_loop().time() + 1.0) is not None:
                    pass
            except (TimeoutError, OSError):
                pass

    def close(self) -> None:
        """End the stream: an answer read to its end keeps its connection; before it, the connection is closed
        (the model stops)."""
        self._answer.close()


def _event(target: Target, data: str) -> TokenEvent | None:
    at = time.perf_counter()
    if not data:
        return None
    message = orjson.loads(data)
    if "error" in message:
        error = str(message["error"])
        if error.startswith(REJECTION_PREFIX):
            raise UpstreamRejected(error, 400)
        raise UpstreamError(f"{target} failed the stream: {error}")
    return token_event(message, at)


class LlmUpstream:
    """Pooled HTTP connections for streams, one pool per Triton; use from one event loop, ``aclose()`` at the
    end. ``breaker``: the circuit breaker every upstream of the router shares."""

    def __init__(self, breaker: CircuitBreaker, max_connections: int = 64):
        self.breaker, self._max_connections = breaker, max_connections
        self._pools: dict[str, StreamPool] = {}

    def _pool(self, base_url: str) -> StreamPool:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = StreamPool(base_url, self._max_connections)
        return pool

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self._pools.values()), return_exceptions=True)
        self._pools.clear()

    async def open(self, target: Target, body: dict, timeouts: GenerationTimeouts) -> GenStream:
        """Start streaming ``body`` from ``target``; returns with the first token in (see the module docstring)."""
        self.breaker.check(target)
        deadline = asyncio.get_running_loop().time() + timeouts.first_token_s
        answer = first = content = None
        try:
            answer = await self._pool(target.base_url).open("POST", f"{target.path}/generate_stream",
                                                            orjson.dumps(body), deadline)
            if answer.status != 200:
                content = await answer.read(deadline)
            while first is None and content is None:
                data = await answer.next_event(deadline)
                if data is None:
                    raise ConnectionError("the stream ended before its first token")
                first = _event(target, data)
        except TimeoutError:
            _close(answer)
            self.breaker.record(target, ok=False)
            raise UpstreamTimeout(f"{target} sent no first token within {timeouts.first_token_s:g} s") from None
        except OSError as e:
            _close(answer)
            self.breaker.record(target, ok=False)
            raise UpstreamError(f"{target} is unreachable: {type(e).__name__}: {e or 'connection failed'}") from None
        except UpstreamError:
            _close(answer)
            self.breaker.record(target, ok=False)
            raise
        except BaseException:  # the caller's refusal, or a cancellation: the arm is not at fault
            _close(answer)
            raise
        if first is None:
            answer.close()
            raise classify(self.breaker, target, answer.status, error_message(content.removeprefix(b"data:").strip()))
        self.breaker.record(target, ok=True)
        return GenStream(target, answer, first, timeouts.token_s)


def _close(answer: StreamAnswer | None) -> None:
    if answer is not None:
        answer.close()
