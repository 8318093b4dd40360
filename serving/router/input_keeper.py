"""Keeps the input texts of a sample of answers in the experiment store, for retraining (opt-in).

The experiment file's ``retain_inputs:`` section (``experiments.retention``) turns it on. On the request path
``offer`` only draws the sample (``fraction``) and appends the request's id, arm and a way to read its texts to
a bounded queue (at most ``MAX_PENDING``; beyond it the oldest are dropped and counted). A task wakes every
``interval_s``, reads the queued texts in a worker thread (the drift feed's way: the BYTES tensor is decoded
there, not on the request path) and hands the ``InputRow`` s to the store's writer. The router's store sweep
(``serving.router.store_sweep``) deletes the kept texts older than ``retention_s``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from experiments.retention import RetainInputs
from experiments.store.records import InputRow, Record

log = logging.getLogger(__name__)

MAX_PENDING = 2000
"""Sampled requests waiting for the worker at most; more drop the oldest (``router_kept_inputs_dropped``)."""


class InputKeeper:
    """Samples answered requests and hands their input texts to the store's writer."""

    def __init__(self, experiment: str, policy: RetainInputs, sink: Callable[[list[Record]], None],
                 registry: CollectorRegistry, rng: random.Random | None = None):
        self.experiment, self.policy, self.sink = experiment, policy, sink
        self._rng = rng or random.Random()
        self._pending: deque[tuple[str, str, Callable[[], list[str]], float]] = deque()
        self.m_kept = Counter("router_kept_inputs", "Answers whose input texts were kept for retraining",
                              ["experiment"], registry=registry)
        self.m_dropped = Counter("router_kept_inputs_dropped", "Sampled answers the input keeper could not keep up "
                                 "with (dropped, oldest first)", ["experiment"], registry=registry)

    def offer(self, request_id: str, arm: str, texts: Callable[[], list[str]]) -> None:
        """On the request path, after the answer: sample it and queue it; O(1)."""
        if self.policy.fraction < 1 and self._rng.random() >= self.policy.fraction:
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.m_dropped.labels(self.experiment).inc()
        self._pending.append((request_id, arm, texts, time.time()))

    def drain(self) -> list[Record]:
        """In a worker thread: read the queued requests' texts into rows (a request with no texts is skipped)."""
        rows: list[Record] = []
        while self._pending:
            request_id, arm, texts, at = self._pending.popleft()
            try:
                read = tuple(texts())
            except Exception:  # a request whose texts cannot be read is simply not kept
                log.debug("request %s: texts unreadable, not kept", request_id, exc_info=True)
                continue
            if read:
                rows.append(InputRow(self.experiment, request_id, arm, read, at))
        return rows

    async def run(self, interval_s: float = 0.5) -> None:
        """Until cancelled: every ``interval_s``, drain the queue in a thread and hand the rows to the writer."""
        while True:
            await asyncio.sleep(interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Drain what is queued now and hand it to the writer."""
        if not self._pending:
            return
        rows = await asyncio.to_thread(self.drain)
        if rows:
            self.sink(rows)
            self.m_kept.labels(self.experiment).inc(len(rows))
