"""The router's HTTP service: KServe v2 in front, Triton behind, one experiment in between.

``create_app`` builds a Starlette app. Callers treat the experiment as a model:
``POST /v2/models/{experiment}/infer`` is assigned to an arm (sticky by key, see ``assignment.py``),
forwarded to that arm's Triton model version over pooled connections, and answered with
``X-Variant`` / ``parameters.variant`` naming the arm that served it. The admin, feedback and report
endpoints live in ``serving.router.admin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import signal
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from export.contract import CONTRACT
from serving.router import admin
from serving.router.breaker import with_fallback
from serving.router.config import Experiment, RouterConfig
from serving.router.drift_read import http_confidences, http_texts
from serving.router.errors import BadRequest, NotFound, PayloadTooLarge, RouterError, UpstreamError
from serving.router.protocol import InferRequest, decode_body, labels_of, parse_request, tag_answer, validate
from serving.router.state import RouterState, get_state
from serving.router.upstream import Answer

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 256
UNASSIGNED = "unassigned"  # the arm label of requests refused before an arm was chosen
DRAIN_LIMIT = 64 << 20
"""An oversize body is read and dropped up to this many bytes before the 413, so the client gets the answer
instead of a connection reset (closing a socket with unread data makes the kernel send RST)."""


class RequestIds:
    """Ids for requests that bring none: a random prefix per app and a counter, ``9f2c...-1a``. Unique
    across replicas and restarts (64 random bits), and several times cheaper than ``uuid4().hex``."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._count):x}"


def error_response(exc: RouterError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; over ``limit`` bytes it is drained (not kept) and refused with a 413."""
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_large = True
        if too_large:
            if size > DRAIN_LIMIT:
                break  # not worth reading on: answer, and let the connection close
            continue
        chunks.append(chunk)
    if too_large:
        what = f"of {int(declared)} bytes " if declared.isdigit() else ""
        raise PayloadTooLarge(f"request body {what}is over the limit of {limit} bytes (--max-body-bytes)")
    return b"".join(chunks)


def sticky_key(exp: Experiment, request: Request, req: InferRequest) -> str | None:
    if exp.sticky.source == "header":
        return request.headers.get(exp.sticky.key) or None
    if exp.sticky.source == "parameter":
        value = req.parameters.get(exp.sticky.key)
        return None if value is None or value == "" else str(value)
    return None


async def forward(state: RouterState, exp: Experiment, arm: str, req: InferRequest) -> tuple[Answer, str]:
    """Send ``req`` to ``arm``, or to the fallback arm when its upstream fails. Returns (answer, arm served)."""
    def send(name: str) -> Awaitable[Answer]:
        return state.upstream.infer(state.target(exp, name), req.body, req.header_length, exp.timeout_s)
    return await with_fallback(state, exp, arm, send)


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


async def spawn_shadow(state: RouterState, exp: Experiment, req: InferRequest, primary_arm: str,
                       primary_labels: tuple[str, ...]) -> None:
    """Runs after the primary answer is sent: starts the shadow copy as its own task, or drops it."""
    assert exp.shadow is not None
    if len(state.shadow_tasks) >= state.config.max_shadow_in_flight:
        state.recorder.shadow_dropped(exp.shadow.name, primary_arm)
        return
    task = asyncio.get_running_loop().create_task(run_shadow(state, exp, req, primary_arm, primary_labels))
    state.shadow_tasks.add(task)
    task.add_done_callback(state.shadow_tasks.discard)


async def infer(request: Request) -> Response:
    start = time.perf_counter()
    state = get_state(request)
    exp, assigner = state.current  # one read: a weight change mid-request does not affect this request
    request_id = request.headers.get("x-request-id") or None
    arm = None
    inflight = state.recorder.inflight
    inflight.inc()
    try:
        state.check_experiment(request.path_params["name"])
        if request_id is not None and len(request_id) > MAX_REQUEST_ID:
            raise BadRequest(f"X-Request-Id is {len(request_id)} characters; at most {MAX_REQUEST_ID} allowed")
        body = await read_body(request, state.config.max_body_bytes)
        req = parse_request(decode_body(body, request.headers.get("content-encoding")),
                            request.headers.get("inference-header-content-length"))
        body_id = req.header.get("id")
        if request_id is None and body_id and body_id.isascii() and body_id.isprintable():
            request_id = body_id[:MAX_REQUEST_ID]  # echoed in X-Request-Id: printable ASCII only
        key = sticky_key(exp, request, req)
        if key is None and exp.sticky.source:
            state.recorder.unkeyed()
        arm = assigner.assign(key, state.rng)
        validate(req, await state.upstream.metadata_for_checks(state.target(exp, arm), min(1.0, exp.timeout_s)))
        answer, served = await forward(state, exp, arm, req)
        content, header_length, labels = tag_answer(answer, served, CONTRACT.output_label)
    except RouterError as e:
        if e.status_code < 500:  # the caller's mistake: recorded apart, never against the arm
            state.recorder.client_error(arm or UNASSIGNED, e.status_code)
        elif not isinstance(e, UpstreamError):  # upstream failures were counted per arm in forward()
            state.recorder.error(arm or UNASSIGNED, e.status_code)
        headers = {"X-Request-Id": request_id or request.app.request_ids.new()}
        if arm:
            headers["X-Variant"] = arm
        return error_response(e, headers)
    finally:
        inflight.dec()
    request_id = request_id or request.app.request_ids.new()
    # recorded right after the answer is written, before this task yields: off the caller's latency,
    # and still before any later request (feedback for this id included) can be read
    after = BackgroundTask(after_answer, state, exp, req, request_id, served, time.perf_counter() - start, labels,
                           key, arm, content, header_length)
    media_type = "application/json" if header_length is None else "application/octet-stream"
    response = Response(content, media_type=media_type, background=after)
    response.raw_headers += [(b"x-variant", served.encode("latin-1")),
                             (b"x-request-id", request_id.encode("latin-1"))]
    if header_length is not None:
        response.raw_headers.append((b"inference-header-content-length", b"%d" % header_length))
    return response


async def after_answer(state: RouterState, exp: Experiment, req: InferRequest, request_id: str, served: str,
                       latency_s: float, labels: tuple[str, ...], key: str | None, arm: str, content: bytes = b"",
                       header_length: int | None = None) -> None:
    """Runs once the answer is sent: records the request with its predictions' top-class probabilities
    (read from ``content``, the answer), offers it to the drift monitor's sample, then maybe starts its
    shadow copy."""
    confidences = http_confidences(content, header_length, CONTRACT.output_probabilities) if content else []
    state.recorder.served(request_id, served, latency_s, labels, key=key, assigned=arm, confidences=confidences)
    if state.drift is not None:  # the texts are decoded in the drift worker, only if this request is sampled
        state.drift.offer(exp, served, lambda: http_texts(req.header, req.body, req.header_length, CONTRACT.input_text),
                          labels, confidences)
    if exp.shadow is not None and state.rng.random() < exp.shadow.fraction:
        await spawn_shadow(state, exp, req, served, labels)


async def infer_version(request: Request) -> Response:
    name = request.path_params["name"]
    raise BadRequest(f"the router chooses the arm and its version; send requests to /v2/models/{name}/infer "
                     "(tritonclient: model_version=\"\")")


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    """Ready only while every arm with traffic has a ready upstream model version."""
    state = get_state(request)
    exp = state.experiment
    if "name" in request.path_params:
        state.check_experiment(request.path_params["name"])
    arms = [a.name for a in exp.arms if exp.shares[a.name] > 0]
    targets = [state.target(exp, a) for a in arms]
    ok = await asyncio.gather(*(state.upstream.ready(t, min(1.0, exp.timeout_s)) for t in targets))
    down = [f"{a} ({t})" for a, t, good in zip(arms, targets, ok, strict=True) if not good]
    if down:
        raise UpstreamError(f"not ready: upstream not ready for arm(s) {', '.join(down)}")
    await asyncio.gather(*(state.upstream.metadata(t) for t in targets), return_exceptions=True)
    return JSONResponse({"ready": True})


async def model_metadata(request: Request) -> Response:
    """The experiment as a model: the control arm's v2 metadata, renamed, plus the arm names."""
    state = get_state(request)
    exp = state.check_experiment(request.path_params["name"])
    meta = dict(await state.upstream.metadata(state.target(exp, exp.arms[0].name)))
    meta.update(name=exp.name, versions=[], arms=list(exp.arm_names))
    return JSONResponse(meta)


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "tunestack-router", "version": "0.1.0", "extensions": ["binary_tensor_data"],
                         "experiment": get_state(request).experiment.name})


async def _router_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouterError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"no such endpoint: {request.method} {request.url.path}"))
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal router error: {type(exc).__name__}: {exc}"}, status_code=500)


def create_app(config: RouterConfig, experiment: Experiment, admin_token: str | None = None,
               handle_sighup: bool = False) -> Starlette:
    """The router app for one experiment. ``handle_sighup`` re-reads the experiment file on SIGHUP."""
    state = RouterState.create(config, experiment, admin_token)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        loop = asyncio.get_running_loop()
        if handle_sighup:
            def on_sighup() -> None:
                task = loop.create_task(admin.reload_logged(state, "SIGHUP"))
                state.background.add(task)
                task.add_done_callback(state.background.discard)
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        if state.store is not None:  # settles the revision to run before the first request
            await state.store.start(state)
        if state.drift is not None:  # the drift worker: cancelled with the other background tasks
            drift_task = loop.create_task(state.drift.run())
            state.background.add(drift_task)
            drift_task.add_done_callback(state.background.discard)
        exp = state.experiment
        warm = [state.target(exp, a) for a in exp.arm_names]
        prefetch = asyncio.ensure_future(asyncio.gather(*(state.upstream.metadata(t) for t in warm),
                                                        return_exceptions=True))
        try:
            yield
        finally:
            if handle_sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            prefetch.cancel()
            if state.shadow_tasks:
                await asyncio.wait(list(state.shadow_tasks), timeout=2.0)
            for task in list(state.shadow_tasks) + list(state.background):
                task.cancel()
            if state.store is not None:  # flushes the buffered rows
                await state.store.stop()
            with contextlib.suppress(Exception):
                await state.upstream.aclose()

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer_version, methods=["POST"]),
        *admin.routes,
    ]
    app = RouterApp(routes=routes, lifespan=lifespan, exception_handlers={
        RouterError: _router_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.router = state
    app.request_ids = RequestIds()
    return app


class RouterApp(Starlette):
    """Starlette, plus a direct path for ``POST /v2/models/NAME/infer``: the one hot route skips the routing
    table and the middleware stack (tens of microseconds a request); every other request, and any error
    that escapes ``infer``, is handled exactly as Starlette would."""

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] != "POST" or not path.startswith("/v2/models/")
                or not path.endswith("/infer") or path.count("/") != 4):
            return await super().__call__(scope, receive, send)
        scope["app"] = self
        scope["path_params"] = {"name": path[len("/v2/models/"):-len("/infer")]}
        request = Request(scope, receive, send)
        try:
            response = await infer(request)
        except Exception as e:  # what infer does not turn into an answer itself: a 500, logged
            response = await _internal_error(request, e)
        await response(scope, receive, send)
