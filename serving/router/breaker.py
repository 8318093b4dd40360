"""The router's circuit breaker, shared by its HTTP and gRPC upstreams.

``CircuitBreaker`` counts consecutive upstream failures per model version (``http_upstream.Target``): after
``BREAKER_FAILURES`` in a row that version is skipped for ``BREAKER_COOLDOWN_S`` (requests fail fast, or
go to the fallback arm), then tried again, so the router recovers by itself. One breaker serves both
protocols, so a Triton that fails over HTTP is skipped over gRPC too. The fallback to another arm is the
routing core's (``serving.router.routing.with_fallback``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

from serving.router.errors import UpstreamError

log = logging.getLogger(__name__)

BREAKER_FAILURES = 3
"""Consecutive failures that open an endpoint's breaker."""
BREAKER_COOLDOWN_S = 1.0
"""Seconds an open breaker fails fast before the endpoint is tried again."""


class _Count:
    """One endpoint's run of failures and when the breaker last opened."""

    def __init__(self) -> None:
        self.failures = 0
        self.opened_at = 0.0


class CircuitBreaker:
    """Failure counts per endpoint key (an ``http_upstream.Target``); use from one event loop."""

    def __init__(self, failures: int = BREAKER_FAILURES, cooldown_s: float = BREAKER_COOLDOWN_S):
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._counts: dict[Hashable, _Count] = {}

    def check(self, key: Hashable) -> None:
        """Raise ``UpstreamError`` while ``key``'s breaker is open; return at once otherwise."""
        c = self._counts.get(key)
        if c and c.failures >= self.failures:
            wait = c.opened_at + self.cooldown_s - time.monotonic()
            if wait > 0:
                raise UpstreamError(f"{key} is marked down after {c.failures} consecutive failures; "
                                    f"retrying it in {wait:.1f} s")

    def record(self, key: Hashable, ok: bool) -> None:
        """Count an answer (``ok``: it closes the breaker) or a failure of ``key``'s upstream."""
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = _Count()
        if ok:
            if c.failures >= self.failures:
                log.info("%s is answering again", key)
            c.failures = 0
            return
        c.failures += 1
        if c.failures >= self.failures:
            c.opened_at = time.monotonic()
            if c.failures == self.failures:
                log.warning("%s failed %d times in a row; failing fast for %.1f s", key, c.failures, self.cooldown_s)

    def is_open(self, key: Hashable) -> bool:
        """Whether ``key`` has failed often enough to be skipped (its cooldown may have passed)."""
        c = self._counts.get(key)
        return c is not None and c.failures >= self.failures

