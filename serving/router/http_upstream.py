"""Talking to Triton: pooled keep-alive HTTP connections, deadlines, and a small circuit breaker.

One ``HttpPool`` (``serving.router.httppool``: keep-alive connections, ``httptools`` parsing) per Triton
base URL, shared by every request. (Not aiohttp or httpx: per request they cost the router several times
the CPU of the pool, and that CPU was most of the router's overhead.) Each call runs under a
whole-request deadline (a free connection, connect, send, answer), so a hung Triton costs at most
``timeout_s``; after ``BREAKER_FAILURES`` consecutive failures an endpoint is skipped for
``BREAKER_COOLDOWN_S`` (requests fail fast, or go to the fallback arm), then tried again, so the router
recovers by itself (the breaker, ``serving.router.breaker.CircuitBreaker``, is shared with the gRPC upstream).

Only the upstream's own failures count toward the breaker: transport errors, timeouts, 5xx answers and
"model unavailable" 4xx answers. An answer that blames the request (any other 4xx, or a 5xx whose
message says Triton could not parse the request) is ``UpstreamRejected``: passed on to the caller as
a 4xx, and neither a failure nor a success for the breaker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass

from serving.router.breaker import CircuitBreaker
from serving.router.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from serving.router.httppool import HttpPool

log = logging.getLogger(__name__)

# Triton answers 400 when the model itself is unavailable; that is the upstream's fault, not the caller's.
UNAVAILABLE = re.compile(r"unknown model|is not found|not ready|unavailable|no available version", re.I)
# ... and 500 for some bodies it cannot parse ("Unable to parse 'data': ..."); those are the caller's fault.
_BAD_CONTENT = re.compile(r"unable to parse|failed to parse|attempt to access JSON|incomplete string data", re.I)
_JSON = {"Content-Type": "application/json"}
_BINARY = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True)
class Target:
    """One Triton model version at one Triton."""

    base_url: str
    model: str
    version: str = ""

    @property
    def path(self) -> str:
        v = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{v}"

    def __str__(self) -> str:
        return f"{self.model} v{self.version or 'default'} at {self.base_url}"


@dataclass(frozen=True)
class Answer:
    """Triton's answer to an inference request."""

    content: bytes
    header_length: int | None
    """``Inference-Header-Content-Length`` when the answer uses the binary tensor extension."""


class Upstream:
    """A pool of HTTP connections to one or more Tritons. Use from one event loop; ``aclose()`` at the end."""

    def __init__(self, max_connections: int = 64, breaker: CircuitBreaker | None = None):
        self._max_connections = max_connections
        self._pools: dict[str, HttpPool] = {}
        self.breaker = breaker or CircuitBreaker()
        """Failure counts per ``Target``; the gRPC upstream shares it."""
        self._metadata: dict[Target, dict] = {}

    def _pool(self, base_url: str) -> HttpPool:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = HttpPool(base_url, self._max_connections)
        return pool

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self._pools.values()), return_exceptions=True)
        self._pools.clear()

    async def infer(self, target: Target, body: bytes, header_length: int | None, timeout_s: float) -> Answer:
        """POST a v2 inference request; raise ``UpstreamError``/``UpstreamTimeout``/``UpstreamRejected``."""
        self.breaker.check(target)
        headers = _JSON if header_length is None else {**_BINARY, "Inference-Header-Content-Length": str(header_length)}
        try:
            status, answer_headers, content = await self._pool(target.base_url).request(
                "POST", f"{target.path}/infer", body, headers, timeout_s)
        except TimeoutError:
            self.breaker.record(target, ok=False)
            raise UpstreamTimeout(f"{target} did not answer within {timeout_s:g} s") from None
        except OSError as e:
            self.breaker.record(target, ok=False)
            raise UpstreamError(f"{target} is unreachable: {type(e).__name__}: {e or 'connection failed'}") from None
        hl = answer_headers.get(b"inference-header-content-length")
        if status >= 400:
            raise classify(self.breaker, target, status, error_message(content))
        self.breaker.record(target, ok=True)
        return Answer(content, int(hl) if hl is not None else None)

    async def _get(self, target: Target, path: str, timeout_s: float) -> tuple[int, bytes]:
        status, _, content = await self._pool(target.base_url).request("GET", path, timeout=timeout_s)
        return status, content

    async def ready(self, target: Target, timeout_s: float = 1.0) -> bool:
        """Whether Triton says this model version is ready (False on any error)."""
        try:
            status, _ = await self._get(target, f"{target.path}/ready", timeout_s)
        except (TimeoutError, OSError):
            return False
        return status == 200

    async def metadata(self, target: Target, timeout_s: float = 2.0) -> dict:
        """The model version's v2 metadata (cached after the first success)."""
        if target in self._metadata:
            return self._metadata[target]
        try:
            status, content = await self._get(target, target.path, timeout_s)
        except TimeoutError:
            raise UpstreamTimeout(f"{target} did not answer within {timeout_s:g} s") from None
        except OSError as e:
            raise UpstreamError(f"{target} is unreachable: {type(e).__name__}: {e}") from None
        if status != 200:
            raise UpstreamError(f"{target} metadata: {status} {error_message(content)}")
        self._metadata[target] = json.loads(content)
        return self._metadata[target]

    def cached_metadata(self, target: Target) -> dict | None:
        return self._metadata.get(target)

    async def metadata_for_checks(self, target: Target, timeout_s: float) -> dict | None:
        """The metadata to validate a request with: cached, else fetched once; None while unknown.

        Never raises and never waits on an endpoint whose breaker is open: the request itself will fail.
        """
        meta = self._metadata.get(target)
        if meta is not None:
            return meta
        try:
            self.breaker.check(target)
            return await self.metadata(target, timeout_s)
        except UpstreamError as e:
            log.debug("no metadata for %s yet: %s", target, e)
            return None


def classify(breaker: CircuitBreaker, target: Target, status: int, message: str) -> UpstreamError | UpstreamRejected:
    """Triton's error answer ``status``/``message`` for ``target``: the caller's (passed on as 4xx, the breaker
    untouched) or the upstream's (counted by ``breaker``)."""
    if status >= 500 and _BAD_CONTENT.search(message):
        return UpstreamRejected(message, 400)
    if status >= 500 or UNAVAILABLE.search(message):
        breaker.record(target, ok=False)
        return UpstreamError(f"{target} answered {status}: {message}")
    return UpstreamRejected(message, status)


def error_message(content: bytes) -> str:
    """The ``error`` of Triton's JSON error answer (else the answer's first 500 bytes as text)."""
    try:
        return str(json.loads(content).get("error", content[:500].decode(errors="replace")))
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return content[:500].decode(errors="replace")
