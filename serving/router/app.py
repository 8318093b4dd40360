"""The router's HTTP service: KServe v2 in front, Triton behind, one experiment in between.

``create_app`` builds a Starlette app. Callers treat the experiment as a model:
``POST /v2/models/{experiment}/infer`` is assigned to an arm, forwarded to that arm's Triton model
version and answered with the arm's name (``serving.router.http_door``, the hot path). Health, readiness
and metadata are here; the admin, feedback and report endpoints live in ``serving.router.admin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from experiments.spec import Experiment
from serving.router import admin, openai_door, page_routes
from serving.router.config import RouterConfig
from serving.router.errors import BadRequest, NotFound, RouterError, UpstreamError
from serving.router.http_door import InferEndpoint, infer
from serving.router.state import RouterState, get_state

log = logging.getLogger(__name__)


def error_response(exc: RouterError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)


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
        # the drift worker and the judge's looks: cancelled with the other background tasks
        for worker in (state.drift, state.looks):
            if worker is not None:
                task = loop.create_task(worker.run())
                state.background.add(task)
                task.add_done_callback(state.background.discard)
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
            if state.drift is not None and state.store is not None:  # the last samples reach the store too
                try:
                    await state.drift.finish()
                except Exception:
                    log.exception("the last drift samples could not be handed to the store")
            if state.store is not None:  # flushes the buffered rows
                await state.store.stop()
            with contextlib.suppress(Exception):
                await state.upstream.aclose()
            with contextlib.suppress(Exception):
                await state.llm_upstream.aclose()

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", ready),
        Route("/v2/models/{name}/infer", InferEndpoint(), methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer_version, methods=["POST"]),
        *openai_door.routes,
        *admin.routes,
        *page_routes.routes,
    ]
    app = RouterApp(routes=routes, lifespan=lifespan, exception_handlers={
        RouterError: _router_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.router = state
    return app


_COMPLETIONS = {openai_door.CHAT_PATH: True, openai_door.COMPLETIONS_PATH: False}
"""The OpenAI door's hot routes (path -> chat)."""


class RouterApp(Starlette):
    """Starlette, plus a direct path for ``POST /v2/models/NAME/infer`` and the OpenAI door's completions: the hot
    routes skip the routing table and the middleware stack (tens of microseconds a request); every other
    request is handled exactly as Starlette would."""

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "POST" and path in _COMPLETIONS:
            scope["app"] = self
            return await openai_door.completions(scope, receive, send, _COMPLETIONS[path])
        if (scope["type"] != "http" or scope["method"] != "POST" or not path.startswith("/v2/models/")
                or not path.endswith("/infer") or path.count("/") != 4):
            return await super().__call__(scope, receive, send)
        scope["app"] = self
        scope["path_params"] = {"name": path[len("/v2/models/"):-len("/infer")]}
        await infer(scope, receive, send)
