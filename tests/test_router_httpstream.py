"""The router's stream client (``serving.router.httpstream``) and its Triton stream (``llm_upstream``) against a
small scripted HTTP server on 127.0.0.1: server-sent events split anywhere, keep-alive reuse, a stream closed
early closing its connection, and each of the generative timeouts (first token, between tokens, a whole
completion) raising the arm's ``UpstreamTimeout``. The real Triton path is in ``test_router_llm_e2e.py`` and
``test_router_llm_faults_e2e.py``; this scripted server is the only way to make a stall happen on cue."""

from __future__ import annotations

import asyncio
import json

import pytest

from experiments.spec import GenerationTimeouts
from export.llm_request import REJECTION_PREFIX
from serving.router.breaker import CircuitBreaker
from serving.router.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from serving.router.http_upstream import Target
from serving.router.httpstream import StreamPool
from serving.router.llm_upstream import LlmUpstream


def token(i: int, final: bool = False) -> bytes:
    data = {"text_output": f"t{i}", "completion_tokens": i, "prompt_tokens": 5, "finish_reason": "stop" if final else ""}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Server:
    """A scripted HTTP/1.1 server: the path's model name picks the script; counts connections and EOFs."""

    def __init__(self):
        self.connections = self.closed_by_client = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                await self.answer(head.split(b" ")[1].split(b"/")[3].decode(), reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            writer.close()

    async def answer(self, script: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if script == "error":
            body = b'{"error": "failed to load the model"}'
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        if script == "ok":  # three tokens, the events split across chunks, CRLF line ends, a comment
            stream = token(1) + b": keep-alive\n\n" + token(2).replace(b"\n", b"\r\n") + token(3, final=True)
            for piece in (stream[:7], stream[7:60], stream[60:]):
                writer.write(chunk(piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif script == "reject":
            writer.write(chunk(b"data: " + json.dumps({"error": REJECTION_PREFIX + " max_tokens"}).encode() + b"\n\n"))
            writer.write(b"0\r\n\r\n")
        elif script in ("stall-first", "stall-after-one", "slow"):
            if script != "stall-first":
                writer.write(chunk(token(1)))
            for i in range(2, 10_000) if script == "slow" else ():
                await asyncio.sleep(0.02)
                writer.write(chunk(token(i)))
                await writer.drain()
            await reader.read()  # a stall: until the client closes the connection
            raise ConnectionResetError("the client closed the stream")


def run(coro):
    return asyncio.run(coro)


def test_events_split_anywhere_are_read_whole_and_the_connection_is_kept():
    async def go():
        async with Server() as server:
            pool = StreamPool(server.url)
            seen = []
            for _ in range(2):
                answer = await pool.open("POST", "/v2/models/ok/generate_stream", b"{}", None)
                while (data := await answer.next_event(None)) is not None:
                    seen.append(data)
                answer.close()
            await pool.aclose()
            return seen, server.connections

    seen, connections = run(go())
    events = [json.loads(d) if d else None for d in seen]
    assert [e["text_output"] if e else None for e in events] == ["t1", None, "t2", "t3"] * 2  # the comment: no data
    assert connections == 1  # the second stream reused the first one's connection


def test_a_stream_closed_before_its_end_closes_its_connection():
    async def go():
        async with Server() as server:
            pool = StreamPool(server.url)
            answer = await pool.open("POST", "/v2/models/stall-after-one/generate_stream", b"{}", None)
            assert json.loads(await answer.next_event(None))["text_output"] == "t1"
            answer.close()
            for _ in range(200):  # the server's handler sees the connection end
                if server.closed_by_client:
                    break
                await asyncio.sleep(0.01)
            return server.closed_by_client

    assert run(go()) == 1


def upstream_open(script: str, timeouts: GenerationTimeouts, whole_s: float | None = None):
    """Open ``script``'s stream through ``LlmUpstream`` and read it to its end: the texts, or the error."""
    async def go():
        async with Server() as server:
            upstream = LlmUpstream(CircuitBreaker())
            target = Target(server.url, script)
            try:
                stream = await upstream.open(target, {"text_input": "hi"}, timeouts)
                deadline = None if whole_s is None else asyncio.get_running_loop().time() + whole_s
                texts = [stream.first.text] + [e.text async for e in stream.rest(deadline)]
                await stream.drain()
                stream.close()
                return texts
            except (UpstreamError, UpstreamRejected) as e:
                return e
            finally:
                await upstream.aclose()
    return run(go())


def test_the_upstream_reads_a_whole_stream_and_classifies_failures():
    assert upstream_open("ok", GenerationTimeouts()) == ["t1", "t2", "t3"]
    rejected = upstream_open("reject", GenerationTimeouts())
    assert isinstance(rejected, UpstreamRejected) and rejected.status_code == 400
    failed = upstream_open("error", GenerationTimeouts())
    assert type(failed) is UpstreamError and "failed to load the model" in str(failed)


@pytest.mark.parametrize(("script", "timeouts", "whole_s", "says"), [
    ("stall-first", GenerationTimeouts(first_token_s=0.3), None, "sent no first token within 0.3 s"),
    ("stall-after-one", GenerationTimeouts(token_s=0.3), None, "sent no token for 0.3 s after 1"),
    ("slow", GenerationTimeouts(token_s=30.0), 0.3, "did not finish the completion in time"),
], ids=["first-token", "between-tokens", "whole-completion"])
def test_each_generative_timeout_is_the_arms_timeout(script, timeouts, whole_s, says):
    error = upstream_open(script, timeouts, whole_s)
    assert isinstance(error, UpstreamTimeout) and error.status_code == 504 and says in str(error)
