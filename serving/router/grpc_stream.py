"""Token streams through the router's gRPC ``ModelStreamInfer``: a generative experiment's requests proxied to the
arm's Triton ``ModelStreamInfer``, every response relayed, per arm, sticky as for ``ModelInfer``.

An experiment is generative when its control arm's Triton model is decoupled (its config's
``model_transaction_policy.decoupled``: the served causal LM, ``export/triton_llm``); then each message of a
client's stream is a ``GrpcStreamExchange``. The routing core assigns it (sticky by the ``x-user-id`` metadata,
or a parameter, as for ``ModelInfer``) and ``send`` opens one upstream ``ModelStreamInfer`` call for it, writes
the request (the arm's model name and version set) and returns once the model's first response is in, so an
arm failing before its first token falls back. The door then relays each response with
``parameters["variant"]`` naming the arm, until the one whose ``finish_reason`` is set. A client that cancels
its stream cancels every upstream call in flight for it (the model stops generating). An ``error_message``
from the model that starts with ``export.llm_request.REJECTION_PREFIX`` is the caller's (INVALID_ARGUMENT
semantics: never counted against the arm); any other is the arm's failure.

Each completed stream is recorded with its figures (``experiments.generation``) as the OpenAI door's are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as pb

from experiments.generation import GenerationSample
from experiments.spec import GenerationTimeouts
from export.contract import GENERATIVE
from export.llm_request import REJECTION_PREFIX
from serving.router.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from serving.router.grpc_codec import tag_answer
from serving.router.grpc_exchange import GrpcExchange
from serving.router.grpc_upstream import GrpcTarget, GrpcUpstream
from serving.router.llm_upstream import TokenEvent
from serving.router.metrics import RequestRef
from serving.router.routing import CLIENT_CLOSED, UNASSIGNED, Refused, finish, route
from serving.router.state import RouterState
from tunestack.bench.streams import StreamTimer

log = logging.getLogger(__name__)


async def is_generative(state: RouterState) -> bool:
    """Whether the running experiment's control arm is a decoupled (token-streaming) Triton model."""
    exp = state.experiment
    try:
        config = await state.grpc_upstream.config(state.grpc_target(exp, exp.arms[0].name))
    except UpstreamError:
        return False
    return config.config.model_transaction_policy.decoupled


def token_of(response: pb.ModelInferResponse, at: float) -> TokenEvent:
    """One streamed response of the model as a ``TokenEvent``."""
    result = InferResult(response)

    def first(name: str):
        value = result.as_numpy(name)
        return None if value is None else value.reshape(-1)[0]

    text, finish_reason = first(GENERATIVE.output_text), first(GENERATIVE.output_finish_reason)
    decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v or "")  # noqa: E731
    return TokenEvent(decode(text), int(first(GENERATIVE.output_completion_tokens)),
                      int(first(GENERATIVE.output_prompt_tokens)), decode(finish_reason) or None, at)


class GrpcGenStream:
    """One upstream ``ModelStreamInfer`` call carrying one request: its first response already read."""

    def __init__(self, target: GrpcTarget, call, first: pb.ModelInferResponse, timeout_s: float):
        self.target, self.call, self.first, self.timeout_s = target, call, first, timeout_s

    async def rest(self) -> AsyncIterator[pb.ModelInferResponse]:
        """The responses after the first, until the last token's (``UpstreamError`` when the arm breaks off)."""
        while True:
            response = await _next(self.target, self.call, self.timeout_s)
            yield response
            if token_of(response, 0.0).finish_reason is not None:
                return

    def cancel(self) -> None:
        self.call.cancel()


async def _next(target: GrpcTarget, call, timeout_s: float) -> pb.ModelInferResponse:
    """The call's next response; its error as the router's error (see the module docstring)."""
    try:
        async with asyncio.timeout(timeout_s):
            message = await call.read()
    except TimeoutError:
        raise UpstreamTimeout(f"{target} sent no response within {timeout_s:g} s") from None
    except grpc.aio.AioRpcError as e:
        raise UpstreamError(f"{target} broke off the stream: {e.code().name}: {e.details()}") from None
    if message is grpc.aio.EOF:
        raise UpstreamError(f"{target} ended the stream without a final response")
    if message.error_message:
        if message.error_message.startswith(REJECTION_PREFIX):
            raise UpstreamRejected(message.error_message, 400)
        raise UpstreamError(f"{target} failed the stream: {message.error_message}")
    return message.infer_response


async def open_stream(upstream: GrpcUpstream, target: GrpcTarget, request: pb.ModelInferRequest,
                      timeouts: GenerationTimeouts) -> GrpcGenStream:
    """Send ``request`` to ``target`` over a new ``ModelStreamInfer`` call; returns with the first response in
    (within ``timeouts.first_token_s``; each later one must come within ``timeouts.token_s``)."""
    upstream.breaker.check(target.key)
    copy = pb.ModelInferRequest()
    copy.CopyFrom(request)
    copy.model_name, copy.model_version = target.model, target.version
    call = upstream.stub(target.address).ModelStreamInfer()
    try:
        await call.write(copy)
        first = await _next(target, call, timeouts.first_token_s)
    except UpstreamRejected:
        call.cancel()
        raise
    except (UpstreamError, grpc.aio.AioRpcError) as e:
        call.cancel()
        upstream.breaker.record(target.key, ok=False)
        if isinstance(e, UpstreamError):
            raise
        raise UpstreamError(f"{target} is unreachable: {e.code().name}: {e.details()}") from None
    except BaseException:
        call.cancel()
        raise
    upstream.breaker.record(target.key, ok=True)
    return GrpcGenStream(target, call, first, timeouts.token_s)


class GrpcStreamExchange(GrpcExchange):
    """A ``ModelStreamInfer`` message for a generative experiment (see the module docstring)."""

    __slots__ = ("result",)

    def __init__(self, request: pb.ModelInferRequest, context):
        super().__init__(request, context, None)
        self.result: tuple[GenerationSample, str] | None = None

    async def check(self, arm: str) -> None:
        """Only where it goes: the model checks every input and parameter itself, and its refusals are the
        caller's (``REJECTION_PREFIX``)."""
        self.target = self.state.grpc_target(self.exp, arm)

    def send(self, arm: str) -> Awaitable[GrpcGenStream]:  # type: ignore[override]
        exp = self.exp
        where = self.target if arm == self.arm else self.state.grpc_target(exp, arm)
        return open_stream(self.state.grpc_upstream, where, self.request, exp.generation_timeouts)

    def outcome(self, answer) -> tuple[tuple[str, ...], list[float]]:
        return (), []

    def generation(self, answer) -> tuple[GenerationSample, str] | None:
        return self.result

    def texts(self) -> list[str]:
        return []


async def relay(state: RouterState, request: pb.ModelInferRequest, context,
                put: Callable[[pb.ModelStreamInferResponse], Awaitable[None]]) -> None:
    """Route one message, relay its responses through ``put``, record the stream (see the module docstring)."""
    ex = GrpcStreamExchange(request, context)
    try:
        stream = await route(state, ex)
    except Refused as r:
        await put(pb.ModelStreamInferResponse(error_message=str(r.error), infer_response=pb.ModelInferResponse(id=request.id)))
        return
    timer, text = StreamTimer(sent_s=ex.start), []
    last = None
    state.recorder.inflight.inc()
    try:
        response = stream.first
        responses = stream.rest()
        while True:
            event = token_of(response, time.perf_counter())
            timer.chunk(True, event.at)
            text.append(event.text)
            last = event
            tag_answer(response, ex.served)
            await put(pb.ModelStreamInferResponse(infer_response=response))
            if event.finish_reason is not None:
                break
            response = await anext(responses)
    except UpstreamError as e:
        state.recorder.error(ex.served, e.status_code, RequestRef(ex.request_id, ex.key, ex.arm or UNASSIGNED, ex.period))
        await put(pb.ModelStreamInferResponse(error_message=str(e), infer_response=pb.ModelInferResponse(id=request.id)))
        return
    except UpstreamRejected as e:
        state.recorder.client_error(ex.served, e.status_code)
        await put(pb.ModelStreamInferResponse(error_message=str(e), infer_response=pb.ModelInferResponse(id=request.id)))
        return
    except asyncio.CancelledError:  # the client cancelled its stream: the upstream call is cancelled below
        state.recorder.client_error(ex.served, CLIENT_CLOSED)
        raise
    finally:
        state.recorder.inflight.dec()
        stream.cancel()
    ex.result = GenerationSample.of(timer.finish(last.completion_tokens)), "".join(text)
    finish(state, ex, stream, time.perf_counter() - ex.start)

