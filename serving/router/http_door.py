"""``POST /v2/models/{experiment}/infer``: the router's HTTP front door, a bare ASGI endpoint over the routing core.

``HttpExchange`` is a KServe v2 HTTP request as the routing core (``serving.router.routing``) drives it: the
core assigns it to an arm (sticky by key, ``experiments.assignment``), this door checks it against that arm's
metadata and forwards its bytes to the arm's Triton model version over pooled connections
(``http_upstream.py``; the core falls back to the fallback arm when it fails), and the answer goes back with
``X-Variant`` / ``parameters.variant`` naming the arm that served it. Once the answer is written, the core
records the request, offers it to the drift monitor and maybe copies it to the shadow.

This one route is plain ASGI rather than a Starlette endpoint: it reads the headers from the scope in
one pass, the body straight from ``receive`` and writes the answer with two ``send`` calls, with no
``Request``, ``Response`` or ``BackgroundTask`` objects in between. On this project's machines every
microsecond of Python on the path costs several after the process wakes from a wait (docs/benchmarks.md,
"The router's own work"), so the path does as little as it can.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

import orjson

from export.contract import CONTRACT
from serving.router.errors import PayloadTooLarge, RouterError
from serving.router.http_codec import (
    decode_body,
    labels_of,
    parse_request,
    tag_answer,
    validate,
)
from serving.router.http_upstream import Answer
from serving.router.routing import MAX_REQUEST_ID, Exchange, Refused, finish, route
from serving.router.state import RouterState
from serving.router.tensor_read import http_confidences, http_texts

log = logging.getLogger(__name__)

DRAIN_LIMIT = 64 << 20
"""An oversize body is read and dropped up to this many bytes before the 413, so the client gets the answer
instead of a connection reset (closing a socket with unread data makes the kernel send RST)."""
_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")


class Disconnected(Exception):
    """The client went away before its body arrived: there is no one to answer."""


async def read_body(receive, declared: bytes | None, limit: int) -> bytes:
    """The request body from ASGI ``receive``; over ``limit`` bytes it is drained (not kept) and refused
    with a 413. ``declared``: the Content-Length header, if any."""
    too_large = declared is not None and declared.isdigit() and int(declared) > limit
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            too_large = True
        if too_large:
            if size > DRAIN_LIMIT:
                break  # not worth reading on: answer, and let the connection close
            continue
        chunks.append(chunk)
    if too_large:
        what = f"of {int(declared)} bytes " if declared is not None and declared.isdigit() else ""
        raise PayloadTooLarge(f"request body {what}is over the limit of {limit} bytes (--max-body-bytes)")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


class HttpExchange(Exchange[Answer]):
    """A KServe v2 HTTP request as the routing core drives it: headers from the ASGI scope, the body from
    ``receive``, the answer tagged with its arm before it is sent."""

    __slots__ = ("headers", "receive", "limit", "req", "content", "header_length", "labels")
    id_field = "X-Request-Id"

    def __init__(self, experiment: str, headers: dict[bytes, bytes], receive, limit: int):
        self.experiment, self.request_id = experiment, _text(headers.get(b"x-request-id")) or None
        self.headers, self.receive, self.limit, self.arm, self.key = headers, receive, limit, None, None

    async def read(self) -> None:
        body = await read_body(self.receive, self.headers.get(b"content-length"), self.limit)
        self.req = parse_request(decode_body(body, _text(self.headers.get(b"content-encoding"))),
                                 _text(self.headers.get(b"inference-header-content-length")))
        self.parameters = self.req.parameters
        body_id = self.req.header.get("id")
        if self.request_id is None and body_id and body_id.isascii() and body_id.isprintable():
            self.request_id = body_id[:MAX_REQUEST_ID]  # echoed in X-Request-Id: printable ASCII only

    def header(self, name: str) -> str | None:
        return _text(self.headers.get(name.encode("latin-1")))

    async def check(self, arm: str) -> None:
        exp = self.exp
        validate(self.req, await self.state.upstream.metadata_for_checks(self.state.target(exp, arm),
                                                                         min(1.0, exp.timeout_s)))

    def send(self, arm: str) -> Awaitable[Answer]:
        exp = self.exp
        return self.state.upstream.infer(self.state.target(exp, arm), self.req.body, self.req.header_length,
                                         exp.timeout_s)

    def tag(self, answer: Answer) -> None:
        """The answer with ``parameters.variant`` naming the arm that served it, and the labels it predicted."""
        self.content, self.header_length, self.labels = tag_answer(answer, self.served, CONTRACT.output_label)

    def outcome(self, answer: Answer) -> tuple[tuple[str, ...], list[float]]:
        return self.labels, http_confidences(self.content, self.header_length, CONTRACT.output_probabilities)

    def texts(self) -> list[str]:
        return http_texts(self.req.header, self.req.body, self.req.header_length, CONTRACT.input_text)

    async def shadow(self) -> tuple[str, ...]:
        exp = self.exp
        answer = await self.state.upstream.infer(self.state.target(exp, exp.shadow.name), self.req.body,
                                                 self.req.header_length, exp.timeout_s)
        return labels_of(answer, CONTRACT.output_label)


async def send_answer(send, status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(content)), *headers]})
    await send({"type": "http.response.body", "body": content})


async def send_error(send, exc: RouterError, request_id: str, arm: str | None = None) -> None:
    """A ``{"error": ...}`` JSON answer with the error's status, the request id and the arm, if any."""
    headers = [_JSON, (b"x-request-id", request_id.encode("latin-1"))]
    if arm:
        headers.append((b"x-variant", arm.encode("latin-1")))
    await send_answer(send, exc.status_code, headers, orjson.dumps({"error": str(exc)}))


async def infer(scope, receive, send) -> None:
    """The ASGI endpoint: answer one inference request, then record it."""
    state: RouterState = scope["app"].state.router
    ex = HttpExchange(scope["path_params"]["name"], dict(scope["headers"]), receive, state.config.max_body_bytes)
    try:
        answer = await route(state, ex)
        ex.tag(answer)
    except Refused as r:
        return await send_error(send, r.error, r.request_id, r.arm)
    except Disconnected:
        return
    except Exception as e:  # a bug of the router's, not the arm's: logged, answered 500, not recorded
        log.exception("unhandled error on POST %s", scope.get("path"))
        return await send_error(send, RouterError(f"internal router error: {type(e).__name__}: {e}"),
                                ex.request_id or state.request_ids.new(), ex.arm)
    headers = [_JSON if ex.header_length is None else _BINARY, (b"x-variant", ex.served.encode("latin-1")),
               (b"x-request-id", ex.request_id.encode("latin-1"))]
    if ex.header_length is not None:
        headers.append((b"inference-header-content-length", b"%d" % ex.header_length))
    latency_s = time.perf_counter() - ex.start
    await send_answer(send, 200, headers, ex.content)
    # recorded right after the answer is written, before this task yields: off the caller's latency,
    # and still before any later request (feedback for this id included) can be read
    finish(state, ex, answer, latency_s)


class InferEndpoint:
    """``infer`` as the route table's ASGI app: an instance, so Starlette hands it scope, receive and send
    instead of wrapping it in a ``Request``."""

    async def __call__(self, scope, receive, send) -> None:
        await infer(scope, receive, send)
