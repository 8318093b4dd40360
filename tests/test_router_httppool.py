"""The router's keep-alive HTTP pool against a real local socket server: reuse, stale connections, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from serving.router.httppool import HttpPool


class Server:
    """A tiny HTTP/1.1 server on 127.0.0.1 that answers from a script and counts connections."""

    def __init__(self, answer=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Test: yes\r\n\r\nok", close_after=None,
                 hang=False, hang_from=None):
        """``hang``: never answer; ``hang_from``: answer that many requests on a connection, then never."""
        self.answer, self.close_after = answer, close_after
        self.hang_from = 0 if hang else hang_from
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                if self.hang_from is not None and served >= self.hang_from:
                    await asyncio.sleep(3600)
                writer.write(self.answer)
                await writer.drain()
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_answers_are_read_and_connections_reused():
    async def main():
        server = Server()
        async with server as url:
            pool = HttpPool(url)
            for _ in range(3):
                status, headers, body = await pool.request("POST", "/v2/models/m/infer", b"{}",
                                                           {"Content-Type": "application/json"})
                assert (status, headers[b"x-test"], body) == (200, b"yes", b"ok")
            await pool.aclose()
        assert server.connections == 1
        assert server.requests[0].startswith(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:")
        assert server.requests[0].endswith(b"Content-Type: application/json\r\n\r\n{}")
    run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced():
    async def main():
        server = Server(close_after=1)
        async with server as url:
            pool = HttpPool(url)
            for _ in range(3):
                assert (await pool.request("GET", "/v2/health/ready"))[0] == 200
                await asyncio.sleep(0.05)  # let the close arrive while the connection is idle
            await pool.aclose()
        assert server.connections == 3
    run(main())


def test_a_cancelled_request_closes_its_connection():
    async def main():
        server = Server(hang=True)
        async with server as url:
            pool = HttpPool(url)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await pool.request("GET", "/slow")
            assert pool._idle == []  # never reused: a late answer must not reach the next request
            await pool.aclose()
    run(main())


def test_a_timeout_on_a_pooled_connection_raises_and_drops_that_connection():
    async def main():
        server = Server(hang_from=1)  # the first answer comes, the second never
        async with server as url:
            pool = HttpPool(url)
            assert (await pool.request("GET", "/fast", timeout=5))[0] == 200
            assert len(pool._idle) == 1  # the next request reuses it: the deadline is the pool's own timer
            with pytest.raises(TimeoutError):
                await pool.request("GET", "/slow", timeout=0.2)
            assert pool._idle == []
            assert (await pool.request("GET", "/fast again", timeout=5))[0] == 200  # on a fresh connection
            await pool.aclose()
        assert server.connections == 2
    run(main())


def test_a_timeout_covers_the_wait_for_a_free_connection():
    async def main():
        async with Server(hang=True) as url:
            pool = HttpPool(url, max_connections=1)
            stuck = asyncio.ensure_future(pool.request("GET", "/holds-the-only-slot"))
            await asyncio.sleep(0)  # it runs up to its first wait, holding the slot
            assert pool._slots.locked()
            with pytest.raises(TimeoutError):
                await pool.request("GET", "/waits-for-a-slot", timeout=0.2)
            assert not stuck.done()
            stuck.cancel()
            await pool.aclose()
    run(main())


def test_a_malformed_answer_or_a_refused_connection_is_a_connection_error():
    async def main():
        async with Server(answer=b"NOT HTTP AT ALL\r\n\r\n") as url:
            with pytest.raises(ConnectionError, match="malformed HTTP answer"):
                await HttpPool(url).request("GET", "/")
        async with Server() as url:
            pass
        with pytest.raises(OSError):
            await HttpPool(url).request("GET", "/")  # the server is gone: connection refused
    run(main())
