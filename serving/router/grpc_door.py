"""The router's gRPC service: Triton's ``GRPCInferenceService`` in front, Triton's gRPC port behind.

``start_grpc_server`` serves it on its own port in the event loop of the HTTP app, on the same
``RouterState``: the same experiment (a weight change through the HTTP admin API applies at once), the
same metrics and circuit breaker. ``GrpcExchange`` is a ``ModelInferRequest`` as the routing core
(``serving.router.routing``) drives it, exactly as it drives the HTTP door's requests: assignment, the
checks, the upstream call, fallback, error accounting and recording are the core's; this door reads and
writes gRPC. ``tritonclient.grpc`` works against it unchanged::

    client = tritonclient.grpc.InferenceServerClient("127.0.0.1:8081")
    result = client.infer("sentiment-ab", inputs, headers={"x-user-id": "user-42"})
    result.get_response().parameters["variant"].string_param   # the arm that served it

The sticky key comes from the request metadata the experiment names (``X-User-Id`` -> ``x-user-id``:
gRPC metadata keys are lower case) or from a request parameter; the arm comes back in the answer's
``parameters["variant"]`` and in the trailing metadata ``x-variant`` (with ``x-request-id``).
``ModelStreamInfer`` answers each message of a stream as ``ModelInfer`` would, an error as the
message's ``error_message``, as Triton does. Errors map to gRPC codes by their HTTP status: 400
INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED.

``ModelInfer`` is served on the wire bytes (``add_service``): the request is parsed for the checks and the
sticky key, but Triton gets the bytes that came in (with its model name and version appended) and the
caller gets Triton's bytes (with the arm appended): nothing is re-serialised on the way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from experiments.spec import Experiment
from serving.router.errors import BadRequest, RouterError
from serving.router.grpc_codec import (
    tag_answer,
)
from serving.router.grpc_exchange import GrpcExchange
from serving.router.grpc_stream import is_generative, relay
from serving.router.routing import Refused, finish, route
from serving.router.state import RouterState

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                409: grpc.StatusCode.ALREADY_EXISTS, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
"""The gRPC status of each ``RouterError`` status code; other 4xx are INVALID_ARGUMENT, other 5xx INTERNAL."""
SERVER_NAME, SERVER_VERSION = "tunestack-router", "0.1.0"


def grpc_status(exc: RouterError) -> grpc.StatusCode:
    code = STATUS_CODES.get(exc.status_code)
    if code is None:
        code = grpc.StatusCode.INVALID_ARGUMENT if exc.status_code < 500 else grpc.StatusCode.INTERNAL
    return code


class RouterService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``GRPCInferenceService`` for one router; the methods Triton has and the router does not (repository,
    shared memory, statistics, trace, log settings) answer UNIMPLEMENTED."""

    def __init__(self, state: RouterState):
        self.state = state

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self._arms_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        await self._check(context, request.name, request.version)
        return pb.ModelReadyResponse(ready=await self._arms_ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        """The experiment as a model: the control arm's metadata, renamed, with no versions."""
        exp, meta = await self._from_control(context, request.name, request.version, self.state.grpc_upstream.metadata)
        answer = pb.ModelMetadataResponse()
        answer.CopyFrom(meta)
        answer.name = exp.name
        del answer.versions[:]
        return answer

    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        """The control arm's configuration, renamed (clients read the label names from it)."""
        exp, config = await self._from_control(context, request.name, request.version, self.state.grpc_upstream.config)
        answer = pb.ModelConfigResponse()
        answer.CopyFrom(config)
        answer.config.name = exp.name
        return answer

    async def ModelInferBytes(self, raw: bytes, context) -> bytes:
        """``ModelInfer`` on the wire bytes (the handler ``start_grpc_server`` serves): the request is parsed
        for the checks and the sticky key but forwarded as it came, and the answer goes back as Triton sent
        it, with the arm appended to its parameters; nothing is re-serialised."""
        try:
            request = pb.ModelInferRequest.FromString(raw)
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the message is not a ModelInferRequest: {e}")
        try:
            response, served, request_id = await self._infer(request, context, raw)
        except Refused as r:
            context.set_trailing_metadata(trailers(r.request_id, r.arm))
            await context.abort(grpc_status(r.error), str(r.error))
        context.set_trailing_metadata((("x-variant", served), ("x-request-id", request_id)))
        return response

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each message answered as by ``ModelInfer``, concurrently; answers come back as they are ready. For a
        generative experiment each message's token stream is relayed instead (``serving.router.grpc_stream``)."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task] = set()
        generative = await is_generative(self.state)

        async def answer(request: pb.ModelInferRequest) -> None:
            if generative:  # a token stream per message (serving.router.grpc_stream)
                return await relay(self.state, request, context, answers.put)
            try:
                response, _, _ = await self._infer(request, context)
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except Refused as r:
                await answers.put(pb.ModelStreamInferResponse(error_message=str(r.error),
                                                              infer_response=pb.ModelInferResponse(id=request.id)))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.ensure_future(answer(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.wait(list(pending))
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def _check(self, context, name: str, version: str) -> Experiment:
        try:
            exp = self.state.check_experiment(name)
            if version:
                raise BadRequest(f"the router chooses the arm and its version; send model_version \"\" for "
                                 f"{name!r}, got {version!r}")
        except RouterError as e:
            await context.abort(grpc_status(e), str(e))
        return exp

    async def _from_control(self, context, name: str, version: str, fetch: Callable[[str], Awaitable[T]]) -> tuple[Experiment, T]:
        """The experiment ``name`` and what ``fetch(target)`` answers from its control arm's Triton; an
        unknown name or a failing upstream aborts the call with its status."""
        exp = await self._check(context, name, version)
        try:
            return exp, await fetch(self.state.grpc_target(exp, exp.arms[0].name))
        except RouterError as e:
            await context.abort(grpc_status(e), str(e))

    async def _arms_ready(self) -> bool:
        state = self.state
        exp = state.experiment
        targets = [state.grpc_target(exp, a.name) for a in exp.arms if exp.shares[a.name] > 0]
        ok = await asyncio.gather(*(state.grpc_upstream.ready(t, min(1.0, exp.timeout_s)) for t in targets))
        return all(ok)

    async def _infer(self, request: pb.ModelInferRequest, context,
                     raw: bytes | None = None) -> tuple[pb.ModelInferResponse | bytes, str, str]:
        """Route one request through the routing core; ``Refused`` when it fails. With ``raw`` (``request``
        serialised, as it arrived) the bytes are forwarded and bytes come back."""
        state = self.state
        ex = GrpcExchange(request, context, raw)
        response = await route(state, ex)
        if raw is None:
            tag_answer(response, ex.served)
        else:
            response += variant_parameter(ex.served)
        latency_s = time.perf_counter() - ex.start
        # recorded once the answer is on its way: off the caller's latency (as the HTTP door does)
        asyncio.get_running_loop().call_soon(finish, state, ex, response, latency_s)
        return response, ex.served, ex.request_id


def trailers(request_id: str, arm: str | None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of an answer: its request id and, once assigned, its arm."""
    return (("x-request-id", request_id),) + ((("x-variant", arm),) if arm else ())


@functools.lru_cache(maxsize=256)
def variant_parameter(arm: str) -> bytes:
    """``parameters["variant"] = arm`` as ModelInferResponse bytes: appended to a serialised answer, it adds
    the entry (protobuf merges map entries on parsing; a later one for the same key wins)."""
    answer = pb.ModelInferResponse()
    tag_answer(answer, arm)
    return answer.SerializeToString()


class _Handlers:
    """Stands in for a server to catch the method handlers the generated ``add_..._to_server`` registers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_service(service: RouterService, server: grpc.aio.Server) -> None:
    """The generated handlers of ``GRPCInferenceService``, but ``ModelInfer`` takes and returns bytes
    (``RouterService.ModelInferBytes``): no deserialiser or serialiser runs on the hot path."""
    caught = _Handlers()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, caught)
    caught.handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(service.ModelInferBytes)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(caught.service, caught.handlers),))
    server.add_registered_method_handlers(caught.service, caught.handlers)


async def start_grpc_server(state: RouterState, host: str, port: int) -> grpc.aio.Server:
    """Serve ``RouterService`` on ``host:port`` in the running event loop (``OSError`` when the port is
    taken); requests over the router's ``max_body_bytes`` get RESOURCE_EXHAUSTED from gRPC itself."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", state.config.max_body_bytes),
                                      ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
    add_service(RouterService(state), server)
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:  # grpcio's way of saying the address is taken
        raise OSError(f"cannot listen for gRPC on {host}:{port} (--grpc-port): {e}") from None
    await server.start()
    exp = state.experiment
    for arm in exp.arm_names:  # the metadata the validation reads; a failed fetch is tried again on use
        state.grpc_upstream.warm(state.grpc_target(exp, arm))
    log.info("gRPC (KServe v2, GRPCInferenceService) on %s:%d", host, port)
    return server


async def stop_grpc_server(server: grpc.aio.Server, state: RouterState, grace_s: float) -> None:
    """Stop taking gRPC requests, let those in flight finish (``grace_s`` at most), close the channels."""
    await server.stop(grace_s)
    await state.grpc_upstream.aclose()
