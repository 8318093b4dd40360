"""Streaming from a served causal LM: Triton's ``generate_stream`` (HTTP server-sent events), one token an event.

    stream = await upstream.open(target, ask.upstream_body(), timeout_s)   # the first token is in
    async for event in stream.rest(): ...                                   # the others as they come
    await stream.aclose()                                                   # early: the model stops

``open`` returns once the model's first response has arrived, so a failure before the first token (a
connection refused, a 5xx, a timeout) is raised there, where the routing core can still fall back, and is
classified as the classifier path's (``http_upstream.classify``, the same circuit breaker): Triton's 4xx, and a
response whose error starts with the model's ``REJECTION_PREFIX``, are the caller's ``UpstreamRejected``; the
rest are the arm's ``UpstreamError``/``UpstreamTimeout``. Each later token must come within the same
``timeout_s``. Closing a stream early closes its connection: Triton marks the request cancelled and the model
stops generating it before its next token (``export/triton_llm/model.py``). One ``httpx.AsyncClient`` (HTTP/1.1
keep-alive pool) per Triton; SSE parsing by ``httpx-sse``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from httpx_sse import EventSource

from export.contract import GENERATIVE
from export.llm_request import REJECTION_PREFIX
from serving.router.breaker import CircuitBreaker
from serving.router.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from serving.router.http_upstream import Target, classify, error_message


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
    """An open ``generate_stream``: ``first`` (already read), then ``rest()``; ``aclose()`` ends it (see the module
    docstring). ``rest()`` raises ``UpstreamError`` for an error the model sends, or a stream that breaks off."""

    def __init__(self, target: Target, response: httpx.Response, events: AsyncIterator, first: TokenEvent):
        self.target, self._response, self._events, self.first = target, response, events, first

    async def rest(self) -> AsyncIterator[TokenEvent]:
        last = self.first
        try:
            while last.finish_reason is None:
                try:
                    sse = await anext(self._events)
                except StopAsyncIteration:
                    raise UpstreamError(f"{self.target} ended the stream after {last.completion_tokens} tokens "
                                        "without a final response") from None
                event = _event(self.target, sse.data)
                if event is not None:
                    last = event
                    yield event
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{self.target} sent no token for too long after {last.completion_tokens}") from None
        except httpx.TransportError as e:
            raise UpstreamError(f"{self.target} broke off the stream: {type(e).__name__}: {e}") from None

    async def aclose(self) -> None:
        await self._response.aclose()


def _event(target: Target, data: str) -> TokenEvent | None:
    at = time.perf_counter()
    if not data:
        return None
    message = json.loads(data)
    if "error" in message:
        error = str(message["error"])
        if error.startswith(REJECTION_PREFIX):
            raise UpstreamRejected(error, 400)
        raise UpstreamError(f"{target} failed the stream: {error}")
    return token_event(message, at)


class LlmUpstream:
    """Pooled HTTP connections for streams, one client per Triton; use from one event loop, ``aclose()`` at
    the end. ``breaker``: the circuit breaker every upstream of the router shares."""

    def __init__(self, breaker: CircuitBreaker, max_connections: int = 64):
        self.breaker = breaker
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _client(self, base_url: str) -> httpx.AsyncClient:
        client = self._clients.get(base_url)
        if client is None:
            client = self._clients[base_url] = httpx.AsyncClient(base_url=base_url, limits=self._limits,
                                                                 trust_env=False)
        return client

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()), return_exceptions=True)
        self._clients.clear()

    async def open(self, target: Target, body: dict, timeout_s: float) -> GenStream:
        """Start streaming ``body`` from ``target``; returns with the first token in (see the module docstring)."""
        self.breaker.check(target)
        client = self._client(target.base_url)
        request = client.build_request("POST", f"{target.path}/generate_stream", json=body,
                                       timeout=httpx.Timeout(timeout_s))
        response = None
        try:
            async with asyncio.timeout(timeout_s):
                response = await client.send(request, stream=True)
                if response.status_code != 200:
                    content = await response.aread()
                else:
                    events = EventSource(response).aiter_sse()
                    first = None
                    while first is None:
                        first = _event(target, (await anext(events)).data)
        except (TimeoutError, httpx.TimeoutException):
            await _close(response)
            self.breaker.record(target, ok=False)
            raise UpstreamTimeout(f"{target} sent no first token within {timeout_s:g} s") from None
        except (httpx.TransportError, StopAsyncIteration, UpstreamError) as e:
            await _close(response)
            self.breaker.record(target, ok=False)
            if isinstance(e, UpstreamError):
                raise
            raise UpstreamError(f"{target} is unreachable: {type(e).__name__}: {e or 'stream ended'}") from None
        except BaseException:  # the caller's refusal, or a cancellation: the arm is not at fault
            await _close(response)
            raise
        if response.status_code != 200:
            await response.aclose()
            raise classify(self.breaker, target, response.status_code,
                           error_message(content.removeprefix(b"data:").strip()))
        self.breaker.record(target, ok=True)
        return GenStream(target, response, events, first)


async def _close(response: httpx.Response | None) -> None:
    if response is not None:
        await response.aclose()
