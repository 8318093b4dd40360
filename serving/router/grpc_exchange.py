"""A ``ModelInferRequest`` as the routing core (``serving.router.routing``) drives it, for the router's gRPC door
(``grpc_door.py``) and its token streams (``grpc_stream.py``): the sticky key from the request metadata or the
parameters, the checks on its tensors, the message (or its wire bytes) forwarded to the arm's Triton."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
from tritonclient.grpc import service_pb2 as pb

from export.contract import CONTRACT
from serving.router.errors import BadRequest
from serving.router.grpc_codec import answer_labels, parameters_of, requested_outputs, tensors_in
from serving.router.routing import Exchange
from serving.router.tensor_checks import check_request
from serving.router.tensor_read import grpc_confidences, grpc_texts


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of request metadata ``key`` (lower case), or None."""
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else item.value.decode("utf-8", "replace")
    return None


def echoable_id(request_id: str) -> str | None:
    """The message's ``id`` when it can travel back in the ``x-request-id`` trailer (printable ASCII: gRPC
    refuses other metadata values, and the answer would fail INTERNAL), else None: the router makes one."""
    return request_id if request_id and request_id.isascii() and request_id.isprintable() else None


class GrpcExchange(Exchange[pb.ModelInferResponse | bytes]):
    """A ``ModelInferRequest`` as the routing core drives it: the sticky key from the metadata or the
    parameters, the checks on its tensors, the message (or its wire bytes) forwarded to the arm's Triton."""

    __slots__ = ("request", "context", "raw", "target")

    def __init__(self, request: pb.ModelInferRequest, context, raw: bytes | None):
        self.experiment = request.model_name
        self.request_id = metadata_value(context, "x-request-id") or echoable_id(request.id)
        self.request, self.context, self.raw, self.arm, self.key = request, context, raw, None, None

    async def read(self) -> None:
        if self.request.model_version:
            raise BadRequest(f"the router chooses the arm and its version; send model_version \"\" for "
                             f"{self.request.model_name!r}, got {self.request.model_version!r}")
        self.parameters = parameters_of(self.request.parameters)

    def header(self, name: str) -> str | None:
        return metadata_value(self.context, name)

    async def check(self, arm: str) -> None:
        self.target = self.state.grpc_target(self.exp, arm)
        check_request(tensors_in(self.request), requested_outputs(self.request), self.parameters,
                      self.state.grpc_upstream.metadata_dict(self.target))

    def send(self, arm: str) -> Awaitable[pb.ModelInferResponse | bytes]:
        exp, upstream = self.exp, self.state.grpc_upstream
        where = self.target if arm == self.arm else self.state.grpc_target(exp, arm)
        if self.raw is not None:
            return upstream.infer_bytes(where, self.raw, exp.timeout_s)
        return upstream.infer(where, self.request, exp.timeout_s)

    def outcome(self, answer: pb.ModelInferResponse | bytes) -> tuple[tuple[str, ...], list[float]]:
        if isinstance(answer, bytes):
            answer = pb.ModelInferResponse.FromString(answer)
        return answer_labels(answer, CONTRACT.output_label), grpc_confidences(answer, CONTRACT.output_probabilities)

    def texts(self) -> list[str]:
        return grpc_texts(self.request, CONTRACT.input_text)

    async def shadow(self) -> tuple[str, ...]:
        exp = self.exp
        copy = pb.ModelInferRequest()  # the shadow's model name and version are set on the copy
        copy.CopyFrom(self.request)
        answer = await self.state.grpc_upstream.infer(self.state.grpc_target(exp, exp.shadow.name), copy, exp.timeout_s)
        return answer_labels(answer, CONTRACT.output_label)
