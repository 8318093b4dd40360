"""The background writer: records leave the request path in a list append and reach the store in batches.

``put`` runs on the event loop, never waits and never raises: it appends to a bounded buffer, or drops
the record (counted) when ``max_buffered`` records are already waiting -- which only happens while the
store is down or slower than the traffic. A task flushes every ``flush_interval_s`` (sooner when
``batch_size`` records are waiting), one transaction per batch; a batch the store refuses stays at the
head of the buffer and is retried, so nothing is lost while the store is down until the buffer is full.

Crash bound: a ``kill -9`` loses the records buffered since the last committed flush -- the answers
of at most ``flush_interval_s`` plus the time of one batch write (and, while the store is down, the
whole buffer). ``stop()`` (a graceful shutdown) flushes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from experiments.store.base import Record, Store, StoreUnavailable

log = logging.getLogger(__name__)


class BatchWriter:
    """Buffers records and writes them to ``store`` in batches, off the request path."""

    def __init__(self, store: Store, flush_interval_s: float = 0.2, batch_size: int = 2000,
                 max_buffered: int = 100_000, on_drop: Callable[[int], None] | None = None,
                 on_store_up: Callable[[bool], None] | None = None):
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.max_buffered = max_buffered
        self._on_drop = on_drop or (lambda n: None)
        self._on_store_up = on_store_up or (lambda up: None)
        self._buffer: list[Record] = []
        self._flushing = asyncio.Lock()  # the task's flushes and on-demand ones (feedback) never overlap
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.dropped = 0
        self.written = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def put(self, record: Record) -> None:
        """Queue one record; drop it (and count it) when the buffer is full. Never blocks."""
        if len(self._buffer) >= self.max_buffered:
            self.dropped += 1
            self._on_drop(1)
            return
        self._buffer.append(record)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def put_all(self, records: Iterable[Record]) -> None:
        """``put`` each record."""
        for record in records:
            self.put(record)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="store-writer")

    async def _run(self) -> None:
        backoff = self.flush_interval_s
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.flush()
            except StoreUnavailable as e:
                log.warning("store unavailable, %d record(s) buffered (%d dropped so far): %s",
                            len(self._buffer), self.dropped, e)
                self._on_store_up(False)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception:  # a bug must not stop the writer: log it, keep serving
                log.exception("store writer failed; retrying")
                backoff = min(backoff * 2, 2.0)
                continue
            self._on_store_up(True)
            backoff = self.flush_interval_s

    async def flush(self) -> None:
        """Write every buffered record, batch by batch; a failed batch stays buffered and the error is raised.
        Safe to call at any time (feedback does, so the answer it refers to is in the store first): flushes
        run one at a time."""
        async with self._flushing:
            while self._buffer:
                batch = self._buffer[: self.batch_size]
                await self.store.write_batch(batch)
                del self._buffer[: len(batch)]
                self.written += len(batch)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the task and flush what is buffered (a graceful shutdown); logs what could not be written."""
        task, self._task = self._task, None
        if task is not None:  # let a batch being written finish, so it is not written twice
            self._stopping = True
            self._wake.set()
            await asyncio.wait([task], timeout=timeout)
            task.cancel()
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except (StoreUnavailable, TimeoutError) as e:
            log.error("store writer stopped with %d record(s) unwritten: %s", len(self._buffer), e)
