"""The floor of a Python proxy hop on this machine: pass-through proxies that do nothing but forward.

``make bench-router`` (``serving.router_bench --floor``) measures these beside the router, in the same
alternating phases against direct Triton, so the router's overhead can be read against what any proxy
written in Python costs here before it does any work of its own:

- ``raw``: an ``asyncio.Protocol`` HTTP/1.1 server on uvloop, requests parsed with ``httptools``,
  forwarded unchanged over the router's own keep-alive pool (``serving.router.httppool``);
- ``asgi``: the same forwarding as a bare ASGI app under uvicorn, with the router's uvicorn settings
  (uvloop, httptools, no access log);
- ``grpc``: a ``grpc.aio`` server forwarding ``ModelInfer`` as raw bytes over one ``grpc.aio`` channel,
  as the router's gRPC endpoint does.

None of them validates, routes, records or tags anything: the client addresses the Triton model and
version itself. ``python -m serving.proxy_floor --upstream http://127.0.0.1:8000 --grpc-upstream
127.0.0.1:8001 --raw-port P1 --asgi-port P2 --grpc-port P3`` (0 or absent: that proxy is not started).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc
import httptools
import uvicorn

from serving.router.httppool import HttpPool
from tunestack.cli import parse_dataclass
from tunestack.names import HOST

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_PASSED_ON = (b"content-type", b"inference-header-content-length")


def _answer_head(status: int, headers: dict[bytes, bytes], length: int) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, b"OK" if status == 200 else b"ERROR"), b"content-length: %d\r\n" % length]
    lines += [b"%s: %s\r\n" % (k, headers[k]) for k in _PASSED_ON if k in headers]
    return b"".join(lines) + b"\r\n"


class RawProxy(asyncio.Protocol):
    """One client connection: parse each request with httptools, forward it, write the answer back."""

    def __init__(self, pool: HttpPool):
        self.pool, self.parser = pool, httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url, self.headers, self.body = b"", {}, []
        self.queue: asyncio.Queue = asyncio.Queue()
        self.worker: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.queue.put_nowait((self.url.decode(), self.headers, b"".join(self.body)))
        self.url, self.headers, self.body = b"", {}, []

    async def _serve(self) -> None:  # one request at a time per connection, in order (HTTP/1.1)
        while True:
            path, headers, body = await self.queue.get()
            forwarded = {k.decode(): headers[k].decode() for k in _PASSED_ON if k in headers}
            try:
                status, answer_headers, content = await self.pool.request("POST", path, body, forwarded)
            except OSError:  # Triton unreachable: close, so the client fails at once instead of waiting
                if self.transport is not None:
                    self.transport.close()
                return
            if self.transport is None:
                return
            self.transport.write(_answer_head(status, answer_headers, len(content)) + content)


def asgi_app(pool: HttpPool):
    """A bare ASGI pass-through (no framework)."""
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in _PASSED_ON}
        status, answer_headers, content = await pool.request(scope["method"], scope["path"], b"".join(chunks), headers)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"%d" % len(content)),
                                *((k, answer_headers[k]) for k in _PASSED_ON if k in answer_headers)]})
        await send({"type": "http.response.body", "body": content})
    return app


async def start_grpc(upstream: str, port: int) -> grpc.aio.Server:
    channel = grpc.aio.insecure_channel(upstream)
    forward = channel.unary_unary(INFER_METHOD)  # no serialisers: bytes in, bytes out

    async def model_infer(raw: bytes, context) -> bytes:
        return await forward(raw)

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(model_infer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}),))
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    return server


async def serve(upstream: str, grpc_upstream: str, raw_port: int, asgi_port: int, grpc_port: int) -> None:
    pool = HttpPool(upstream)
    loop = asyncio.get_running_loop()
    servers = []
    if raw_port:
        servers.append(await loop.create_server(lambda: RawProxy(pool), HOST, raw_port))
    grpc_server = await start_grpc(grpc_upstream, grpc_port) if grpc_port else None
    try:
        if asgi_port:
            config = uvicorn.Config(asgi_app(pool), host=HOST, port=asgi_port, loop="none", http="httptools",
                                    access_log=False, proxy_headers=False, server_header=False, date_header=False,
                                    lifespan="off", log_level="warning")
            await uvicorn.Server(config).serve()
        else:
            await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()
        if grpc_server is not None:
            await grpc_server.stop(0)
        await pool.aclose()


@dataclass
class FloorArgs:
    """The pass-through proxies to start in front of one Triton (a port of 0: that proxy is not started)."""

    upstream: str
    """Triton's HTTP URL, http://HOST:PORT."""
    grpc_upstream: str
    """Triton's gRPC HOST:PORT."""
    raw_port: int = 0
    """asyncio.Protocol + httptools proxy (0: none)."""
    asgi_port: int = 0
    """Bare ASGI app on uvicorn (0: none)."""
    grpc_port: int = 0
    """grpc.aio pass-through (0: none)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_dataclass(FloorArgs, argv, prog="python -m serving.proxy_floor", description=__doc__.split("\n\n")[0])
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.upstream, args.grpc_upstream, args.raw_port, args.asgi_port, args.grpc_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
