"""Talking to Triton over gRPC: one pooled ``grpc.aio`` channel per Triton, deadlines, the shared breaker.

The router's gRPC endpoint (``serving.router.grpc_door``) forwards ``ModelInferRequest`` messages to
Triton's own ``GRPCInferenceService``. One channel per Triton gRPC address carries every request
(HTTP/2 multiplexes them), each under the experiment's ``timeout_s`` as its gRPC deadline. Failures are
classified as the HTTP upstream classifies them, and counted by the same ``breaker.CircuitBreaker`` as
the HTTP upstream's, keyed by the model version's ``Target``, so a Triton that fails over one protocol
is skipped over both:

- ``INVALID_ARGUMENT`` about the request itself is the caller's mistake: ``UpstreamRejected`` (400),
  the breaker counts it as an answer;
- a timeout is ``UpstreamTimeout`` (504); a transport failure, ``UNAVAILABLE``, an unknown or unready
  model, ``INTERNAL`` and every other code are ``UpstreamError`` (503): the arm's failure.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving.router.breaker import CircuitBreaker
from serving.router.errors import BadRequest, UpstreamError, UpstreamRejected, UpstreamTimeout
from serving.router.http_upstream import UNAVAILABLE, Target

log = logging.getLogger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                   ("grpc.enable_retries", 0), ("grpc.keepalive_time_ms", 30_000))
"""Channel settings: no size limit of its own (the router's endpoint limits what comes in), no
hidden retries (the router's fallback decides), keep-alive pings on idle connections."""


@dataclass(frozen=True)
class GrpcTarget:
    """One Triton model version at one Triton's gRPC address."""

    address: str
    """``host:port`` of Triton's gRPC endpoint."""
    key: Target
    """The same model version's HTTP ``Target``: the breaker and the metadata are keyed by it."""

    @property
    def model(self) -> str:
        return self.key.model

    @property
    def version(self) -> str:
        return self.key.version

    def __str__(self) -> str:
        return f"{self.key.model} v{self.key.version or 'default'} at grpc://{self.address}"


class GrpcUpstream:
    """Pooled gRPC channels to one or more Tritons; use from one event loop, ``aclose()`` at the end.

    ``breaker`` is the circuit breaker both protocols share (the HTTP ``Upstream.breaker``).
    """

    def __init__(self, breaker: CircuitBreaker):
        self.breaker = self._breaker = breaker
        """The circuit breaker both protocols share (the token streams of ``grpc_stream`` use it too)."""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub] = {}
        self._metadata: dict[Target, pb.ModelMetadataResponse] = {}
        self._metadata_dicts: dict[Target, dict] = {}
        self._config: dict[Target, pb.ModelConfigResponse] = {}
        self._warming: dict[Target, asyncio.Task] = {}
        self._raw_infer: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._renames: dict[GrpcTarget, bytes] = {}

    def stub(self, address: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            stub = self._stubs[address] = service_pb2_grpc.GRPCInferenceServiceStub(self._channels[address])
        return stub

    async def aclose(self) -> None:
        for task in self._warming.values():
            task.cancel()
        await asyncio.gather(*(c.close() for c in self._channels.values()), return_exceptions=True)
        self._channels.clear()
        self._stubs.clear()
        self._raw_infer.clear()

    async def infer(self, target: GrpcTarget, request: pb.ModelInferRequest, timeout_s: float) -> pb.ModelInferResponse:
        """Send ``request`` (its model name and version are set here); raise ``UpstreamError``/
        ``UpstreamTimeout``/``UpstreamRejected`` as the module docstring says."""
        self._breaker.check(target.key)
        request.model_name, request.model_version = target.model, target.version
        try:
            response = await self.stub(target.address).ModelInfer(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            raise self._failure(target, e, timeout_s) from None
        self._breaker.record(target.key, ok=True)
        return response

    async def infer_bytes(self, target: GrpcTarget, request: bytes, timeout_s: float) -> bytes:
        """``infer`` for a serialised request whose model name is the experiment's and whose version is "":
        the target's name and version are appended (a later occurrence of a protobuf field wins), and the
        answer comes back serialised, so nothing is parsed or re-serialised on the way."""
        self._breaker.check(target.key)
        call = self._raw_infer.get(target.address)
        if call is None:
            self.stub(target.address)  # opens the channel
            call = self._raw_infer[target.address] = self._channels[target.address].unary_unary(MODEL_INFER)
        rename = self._renames.get(target)
        if rename is None:
            rename = self._renames[target] = pb.ModelInferRequest(model_name=target.model,
                                                                  model_version=target.version).SerializeToString()
        try:
            response = await call(request + rename, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            raise self._failure(target, e, timeout_s) from None
        self._breaker.record(target.key, ok=True)
        return response

    def _failure(self, target: GrpcTarget, e: grpc.aio.AioRpcError, timeout_s: float) -> Exception:
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT and not UNAVAILABLE.search(details):
            self._breaker.record(target.key, ok=True)
            return UpstreamRejected(details, BadRequest.status_code)
        self._breaker.record(target.key, ok=False)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return UpstreamTimeout(f"{target} did not answer within {timeout_s:g} s")
        return UpstreamError(f"{target} answered {code.name}: {details}")

    async def ready(self, target: GrpcTarget, timeout_s: float = 1.0) -> bool:
        """Whether Triton says this model version is ready (False on any error)."""
        try:
            answer = await self.stub(target.address).ModelReady(
                pb.ModelReadyRequest(name=target.model, version=target.version), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return answer.ready

    async def metadata(self, target: GrpcTarget, timeout_s: float = 2.0) -> pb.ModelMetadataResponse:
        """The model version's metadata (cached after the first success)."""
        if target.key not in self._metadata:
            request = pb.ModelMetadataRequest(name=target.model, version=target.version)
            meta = await self._call("ModelMetadata", target, request, timeout_s)
            self._metadata_dicts[target.key] = MessageToDict(meta, preserving_proto_field_name=True)
            self._metadata[target.key] = meta
        return self._metadata[target.key]

    def metadata_dict(self, target: GrpcTarget) -> dict | None:
        """The cached metadata as Triton's HTTP endpoint writes it (what ``tensor_checks.check_request`` reads);
        when it is not cached yet, None, and a fetch starts in the background."""
        meta = self._metadata_dicts.get(target.key)
        if meta is None:
            self.warm(target)
        return meta

    def warm(self, target: GrpcTarget) -> None:
        """Fetch the metadata in the background unless it is cached or on its way; a failure is logged."""
        if target.key in self._metadata or target.key in self._warming:
            return

        async def fetch() -> None:
            try:
                await self.metadata(target)
            except (UpstreamError, UpstreamTimeout) as e:
                log.debug("no metadata yet for %s: %s", target, e)
            finally:
                self._warming.pop(target.key, None)

        self._warming[target.key] = asyncio.get_running_loop().create_task(fetch())

    async def config(self, target: GrpcTarget, timeout_s: float = 2.0) -> pb.ModelConfigResponse:
        """The model version's configuration (cached after the first success)."""
        if target.key not in self._config:
            request = pb.ModelConfigRequest(name=target.model, version=target.version)
            self._config[target.key] = await self._call("ModelConfig", target, request, timeout_s)
        return self._config[target.key]

    async def _call(self, method: str, target: GrpcTarget, request, timeout_s: float):
        try:
            return await getattr(self.stub(target.address), method)(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise UpstreamTimeout(f"{target} did not answer within {timeout_s:g} s") from None
            raise UpstreamError(f"{target} {method}: {e.code().name}: {e.details()}") from None
