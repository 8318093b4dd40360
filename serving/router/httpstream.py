"""Streamed HTTP/1.1 answers over keep-alive connections: the router's client for server-sent events.

    pool = StreamPool("http://127.0.0.1:8000", max_connections=64)
    answer = await pool.open("POST", "/v2/models/m/generate_stream", body, deadline)   # status and headers in
    data = await answer.next_event(deadline)    # one event's data; None at the end of the answer
    answer.close()                               # before the end: the connection is closed (the server sees it)

The classifier path's pool (``serving.router.httppool``) reads a whole answer; a token stream must be read as
it arrives. This is the same machinery for that: one ``asyncio.Protocol`` per connection, ``httptools``
(llhttp) parsing, the request written as one bytes object, and each wait bounded by one timer on the event
loop (``TimeoutError`` past its ``deadline``, loop time) rather than a general client's per-request objects,
task hops and cancel scopes, which cost a stream's first token several milliseconds of Python.

Server-sent events are split at blank lines; an event's ``data`` is its ``data:`` lines joined with newlines
(comments and other fields are ignored, as the SSE spec says for a client that uses only ``data``). An answer
read to its end leaves its connection in the pool for the next stream; one closed before its end closes its
connection. A pooled connection the server closed while idle is retried once on a fresh one. Failures are
``OSError``s (``ConnectionError`` for a reset or an unparsable answer).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools


class _Connection(asyncio.Protocol):
    """One TCP connection; the parser's callbacks fill in the answer, and ``wait`` returns on any progress."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.reset()

    def reset(self) -> None:
        self.status: int | None = None
        self.body = bytearray()
        self.complete, self.keep_alive, self.answered_bytes = False, True, False
        self.error: Exception | None = None

    # -- asyncio.Protocol and httptools callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._end(ConnectionError(f"malformed HTTP answer: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete:
            self._end(ConnectionResetError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body += body
        self._wake()

    def on_message_complete(self) -> None:
        self.complete, self.keep_alive = True, self.parser.should_keep_alive()
        self._wake()

    # -- use --------------------------------------------------------------------------------------
    def _end(self, error: Exception) -> None:
        self.error = self.error or error
        self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _time_out(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    async def wait(self, deadline: float | None) -> None:
        """Until the parser makes progress (or the connection fails: ``error``); past ``deadline``
        ``TimeoutError``."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, self._time_out)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()
        if self.error is not None:
            raise self.error

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.keep_alive

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class StreamAnswer:
    """An answer being read: ``status`` (headers in), then ``next_event`` or ``read`` (see the module docstring)."""

    def __init__(self, pool: StreamPool, conn: _Connection):
        self._pool, self._conn = pool, conn
        self.status: int = conn.status or 0
        self._pending = bytearray()
        self._released = False

    async def next_event(self, deadline: float | None) -> str | None:
        """The next server-sent event's data (``""`` for an event without data); None when the answer ended."""
        conn = self._conn
        while True:
            if conn.body:
                self._pending += conn.body.replace(b"\r\n", b"\n")
                conn.body.clear()
            end = self._pending.find(b"\n\n")
            if end >= 0:
                event = bytes(self._pending[:end])
                del self._pending[:end + 2]
                return "\n".join(line[5:].removeprefix(b" ").decode() for line in event.split(b"\n")
                                 if line.startswith(b"data:"))
            if conn.complete:
                return None
            await conn.wait(deadline)

    async def read(self, deadline: float | None) -> bytes:
        """The rest of the answer's body (an error answer)."""
        while not self._conn.complete:
            await self._conn.wait(deadline)
        body = bytes(self._pending + self._conn.body)
        self._pending.clear()
        self._conn.body.clear()
        return body

    @property
    def complete(self) -> bool:
        """The whole answer was received (closing then keeps the connection)."""
        return self._conn.complete

    def close(self) -> None:
        """Give the connection back (an answer read to its end) or close it (an answer cut short); twice is fine."""
        if not self._released:
            self._released = True
            self._pool._release(self._conn, self._conn.complete and self._conn.error is None)


class StreamPool:
    """Keep-alive connections to one ``http://host:port`` base URL, at most ``max_connections`` at once."""

    def __init__(self, base_url: str, max_connections: int = 64):
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"upstream URL {base_url!r} must look like http://HOST:PORT")
        self.host, self.port = url.hostname, url.port or 80
        self._head = f"Host: {url.netloc}\r\nContent-Type: application/json\r\n".encode()
        self._prefix = url.path.rstrip("/")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.closed = False

    async def open(self, method: str, path: str, body: bytes, deadline: float | None) -> StreamAnswer:
        """Send a request and return once the answer's status and headers are in (``TimeoutError`` past
        ``deadline``, loop time)."""
        if self.closed:
            raise ConnectionError("the HTTP stream pool is closed")
        data = (f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode() + self._head
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        async with asyncio.timeout_at(deadline):
            await self._slots.acquire()
        try:
            return await self._send(data, deadline)
        except BaseException:
            self._slots.release()
            raise

    async def _send(self, data: bytes, deadline: float | None) -> StreamAnswer:
        while True:
            conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
            elif not conn.usable:
                conn.close()
                continue
            conn.reset()
            assert conn.transport is not None
            conn.transport.write(data)
            try:
                while conn.status is None:
                    await conn.wait(deadline)
            except ConnectionError:
                conn.close()
                if reused and not conn.answered_bytes:
                    continue  # the server closed this idle connection: once more on another one
                raise
            except BaseException:  # timed out, cancelled: the connection's state is unknown
                conn.close()
                raise
            return StreamAnswer(self, conn)

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if reusable and conn.usable and not self.closed:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    async def aclose(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()
