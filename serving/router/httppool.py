"""A small keep-alive HTTP/1.1 client for the router's hot path: pooled connections to one upstream.

The router sends one kind of request to Triton, over loopback or a LAN, thousands of times a second.
A general client (aiohttp) spends most of the router's per-request CPU building request objects,
header multidicts, timers and tracing hooks it does not need. This pool writes the request line and
headers as one bytes object, parses the answer with ``httptools`` (llhttp, the parser uvicorn uses),
and keeps connections open between requests:

    pool = HttpPool("http://127.0.0.1:8000", max_connections=64)
    status, headers, body = await pool.request("POST", "/v2/models/m/infer", body, {"Content-Type": "..."})
    await pool.aclose()

Failures are ``OSError``s (``ConnectionError`` for a reset or an unparsable answer); a request given a
``timeout`` that runs past it raises ``TimeoutError``. The deadline is one timer on the event loop per
request (not ``asyncio.timeout``'s task cancellation, which costs more on every request that meets it).
A request that times out or is cancelled mid-way closes its connection, so a late answer can never be
read by the next request. A pooled connection that the server closed while idle is retried once on a
fresh one.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import httptools

log = logging.getLogger(__name__)


class _Connection(asyncio.Protocol):
    """One TCP connection: sends a request, resolves ``waiter`` with (status, headers, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.answered_bytes = False
        self.keep_alive = True

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"malformed HTTP answer: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionResetError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))

    # -- use --------------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.keep_alive

    async def send(self, data: bytes, deadline: float | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
        """Write one request, wait for its answer; past ``deadline`` (loop time) ``TimeoutError``."""
        assert self.waiter is None and self.transport is not None, "one request at a time per connection"
        self.headers, self.body, self.answered_bytes = {}, [], False
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.transport.write(data)
        if deadline is None:
            return await waiter
        timer = loop.call_at(deadline, self._fail, TimeoutError())
        try:
            return await waiter
        finally:
            timer.cancel()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Keep-alive connections to one ``http://host:port`` base URL, at most ``max_connections`` at once."""

    def __init__(self, base_url: str, max_connections: int = 64):
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"upstream URL {base_url!r} must look like http://HOST:PORT")
        self.host, self.port = url.hostname, url.port or 80
        self._host_header = f"Host: {url.netloc}\r\n".encode()
        self._prefix = url.path.rstrip("/")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    def _encode(self, method: str, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        return (f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode() + self._host_header
                + f"Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> tuple[int, dict[bytes, bytes], bytes]:
        """Send one request; return (status, headers with lower-case byte names, body). ``timeout``: seconds
        for all of it (a free connection, connecting, the answer), else ``TimeoutError``."""
        if self.closed:
            raise ConnectionError("the HTTP pool is closed")
        data = self._encode(method, path, body, headers)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        if self._slots.locked():  # all connections busy: wait for one, within the deadline
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        else:
            await self._slots.acquire()  # returns at once
        try:
            return await self._exchange(data, deadline)
        finally:
            self._slots.release()

    async def _exchange(self, data: bytes, deadline: float | None) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request on an idle connection, or a new one, holding a slot."""
        while True:
            conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect()
            elif not conn.usable:
                conn.close()
                continue
            try:
                answer = await conn.send(data, deadline)
            except ConnectionError:
                conn.close()
                if reused and not conn.answered_bytes:
                    continue  # the server closed this idle connection: once more on another one
                raise
            except BaseException:  # timed out, cancelled or worse: the connection's state is unknown
                conn.close()
                raise
            if conn.usable and not self.closed:
                self._idle.append(conn)
            else:
                conn.close()
            return answer

    async def aclose(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()
