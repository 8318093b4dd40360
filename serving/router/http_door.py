"""``POST /v2/models/{experiment}/infer``: the router's hot path, as a bare ASGI endpoint.

A request is assigned to an arm (sticky by key, see ``assignment.py``), checked against that arm's
metadata, forwarded to the arm's Triton model version over pooled connections (``upstream.py``; the
fallback arm when it fails) and answered with ``X-Variant`` / ``parameters.variant`` naming the arm
that served it. Once the answer is written, the request is recorded, offered to the drift monitor and
maybe copied to the shadow.

This one route is plain ASGI rather than a Starlette endpoint: it reads the headers from the scope in
one pass, the body straight from ``receive`` and writes the answer with two ``send`` calls, with no
``Request``, ``Response`` or ``BackgroundTask`` objects in between. On this project's machines every
microsecond of Python on the path costs several after the process wakes from a wait (README, "Where
the floor is"), so the path does as little as it can.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable

import orjson

from experiments.spec import Experiment
from export.contract import CONTRACT
from serving.router.breaker import with_fallback
from serving.router.errors import BadRequest, PayloadTooLarge, RouterError, UpstreamError
from serving.router.http_codec import (
    InferRequest,
    decode_body,
    labels_of,
    parse_request,
    tag_answer,
    validate,
)
from serving.router.http_upstream import Answer
from serving.router.metrics import RequestRef
from serving.router.state import RouterState
from serving.router.tensor_read import http_confidences, http_texts

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 256
UNASSIGNED = "unassigned"  # the arm label of requests refused before an arm was chosen
DRAIN_LIMIT = 64 << 20
"""An oversize body is read and dropped up to this many bytes before the 413, so the client gets the answer
instead of a connection reset (closing a socket with unread data makes the kernel send RST)."""
_JSON = (b"content-type", b"application/json")
_BINARY = (b"content-type", b"application/octet-stream")


class RequestIds:
    """Ids for requests that bring none: a random prefix per app and a counter, ``9f2c...-1a``. Unique
    across replicas and restarts (64 random bits), and several times cheaper than ``uuid4().hex``."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._count):x}"


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


async def forward(state: RouterState, exp: Experiment, arm: str, req: InferRequest) -> tuple[Answer, str]:
    """Send ``req`` to ``arm``, or to the fallback arm when its upstream fails. Returns (answer, arm served)."""
    def send(name: str) -> Awaitable[Answer]:
        return state.upstream.infer(state.target(exp, name), req.body, req.header_length, exp.timeout_s)
    return await with_fallback(state, exp, arm, send)


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
    start = time.perf_counter()
    app = scope["app"]
    state: RouterState = app.state.router
    exp, assigner, period = state.current  # one read: a weight change mid-request does not affect this request
    headers = dict(scope["headers"])  # lower-case names (ASGI)
    request_id = _text(headers.get(b"x-request-id")) or None
    arm = key = None
    inflight = state.recorder.inflight
    inflight.inc()
    try:
        state.check_experiment(scope["path_params"]["name"])
        if request_id is not None and len(request_id) > MAX_REQUEST_ID:
            raise BadRequest(f"X-Request-Id is {len(request_id)} characters; at most {MAX_REQUEST_ID} allowed")
        body = await read_body(receive, headers.get(b"content-length"), state.config.max_body_bytes)
        req = parse_request(decode_body(body, _text(headers.get(b"content-encoding"))),
                            _text(headers.get(b"inference-header-content-length")))
        body_id = req.header.get("id")
        if request_id is None and body_id and body_id.isascii() and body_id.isprintable():
            request_id = body_id[:MAX_REQUEST_ID]  # echoed in X-Request-Id: printable ASCII only
        key = exp.sticky.key_of(lambda name: _text(headers.get(name.encode("latin-1"))), req.parameters)
        if key is None and exp.sticky.source:
            state.recorder.unkeyed()
        arm = assigner.assign(key, state.rng)
        validate(req, await state.upstream.metadata_for_checks(state.target(exp, arm), min(1.0, exp.timeout_s)))
        answer, served = await forward(state, exp, arm, req)
        content, header_length, labels = tag_answer(answer, served, CONTRACT.output_label)
    except RouterError as e:
        request_id = request_id or app.request_ids.new()
        record_refused(state, e, arm, key, request_id, period)
        return await send_error(send, e, request_id, arm)
    except Disconnected:
        return
    except Exception as e:  # a bug of the router's, not the arm's: logged, answered 500, not recorded
        log.exception("unhandled error on POST %s", scope.get("path"))
        return await send_error(send, RouterError(f"internal router error: {type(e).__name__}: {e}"),
                                request_id or app.request_ids.new(), arm)
    finally:
        inflight.dec()
    request_id = request_id or app.request_ids.new()
    answer_headers = [_JSON if header_length is None else _BINARY, (b"x-variant", served.encode("latin-1")),
                      (b"x-request-id", request_id.encode("latin-1"))]
    if header_length is not None:
        answer_headers.append((b"inference-header-content-length", b"%d" % header_length))
    latency_s = time.perf_counter() - start
    await send_answer(send, 200, answer_headers, content)
    # recorded right after the answer is written, before this task yields: off the caller's latency,
    # and still before any later request (feedback for this id included) can be read
    after_answer(state, exp, req, request_id, served, latency_s, labels, key, arm, period, content, header_length)


def record_refused(state: RouterState, e: RouterError, arm: str | None, key: str | None, request_id: str,
                   period: int) -> None:
    """Record a request answered with ``e`` (HTTP and gRPC). A 4xx is the caller's mistake: recorded apart,
    never against an arm. A 5xx counts once, against the arm it happened on (``UpstreamError.arm``, else the
    assigned arm), as the final outcome of the request: with its unit and period once it had an arm."""
    if e.status_code < 500:
        state.recorder.client_error(arm or UNASSIGNED, e.status_code)
        return
    failed = (e.arm if isinstance(e, UpstreamError) else None) or arm or UNASSIGNED
    state.recorder.error(failed, e.status_code, RequestRef(request_id, key, arm, period) if arm else None)


def after_answer(state: RouterState, exp: Experiment, req: InferRequest, request_id: str, served: str,
                 latency_s: float, labels: tuple[str, ...], key: str | None, arm: str, period: int,
                 content: bytes = b"", header_length: int | None = None) -> None:
    """Runs once the answer is sent: records the request (with its assigned arm and period, and its
    predictions' top-class probabilities read from ``content``, the answer), offers it to the drift monitor's
    sample, then maybe starts its shadow copy. Never raises: the answer is out, a failure here is logged."""
    try:
        confidences = http_confidences(content, header_length, CONTRACT.output_probabilities) if content else []
        state.recorder.served(request_id, served, latency_s, labels, key=key, assigned=arm, confidences=confidences,
                              period=period)
        if state.drift is not None:  # the texts are decoded in the drift worker, only if this request is sampled
            state.drift.offer(exp, served, lambda: http_texts(req.header, req.body, req.header_length,
                                                              CONTRACT.input_text), labels, confidences)
        if exp.shadow is not None and state.rng.random() < exp.shadow.fraction:
            spawn_shadow(state, exp, req, served, labels)
    except Exception:
        log.exception("recording request %s failed", request_id)


async def run_shadow(state: RouterState, exp: Experiment, req: InferRequest, primary_arm: str,
                     primary_labels: tuple[str, ...]) -> None:
    """Send the copy to the shadow and record latency and agreement; never raises."""
    assert exp.shadow is not None
    start = time.perf_counter()
    try:
        answer = await state.upstream.infer(state.target(exp, exp.shadow.name), req.body, req.header_length,
                                            exp.timeout_s)
        labels = labels_of(answer, CONTRACT.output_label)
    except Exception as e:  # the shadow's failures are recorded, never raised
        log.debug("shadow %s failed: %s", exp.shadow.name, e)
        state.recorder.shadow_result(exp.shadow.name, primary_arm, None, primary_labels, None)
        return
    state.recorder.shadow_result(exp.shadow.name, primary_arm, time.perf_counter() - start, primary_labels, labels)


def spawn_shadow(state: RouterState, exp: Experiment, req: InferRequest, primary_arm: str,
                 primary_labels: tuple[str, ...]) -> None:
    """Starts the shadow copy as its own task, or drops it when too many are in flight."""
    assert exp.shadow is not None
    if len(state.shadow_tasks) >= state.config.max_shadow_in_flight:
        state.recorder.shadow_dropped(exp.shadow.name, primary_arm)
        return
    task = asyncio.get_running_loop().create_task(run_shadow(state, exp, req, primary_arm, primary_labels))
    state.shadow_tasks.add(task)
    task.add_done_callback(state.shadow_tasks.discard)


class InferEndpoint:
    """``infer`` as the route table's ASGI app: an instance, so Starlette hands it scope, receive and send
    instead of wrapping it in a ``Request``."""

    async def __call__(self, scope, receive, send) -> None:
        await infer(scope, receive, send)
