"""The parts of the KServe v2 gRPC protocol the router reads and writes (the gRPC twin of ``http_codec.py``).

A ``ModelInferRequest`` carries its tensors either in typed ``contents`` fields or, as
``tritonclient.grpc`` sends them, in ``raw_input_contents`` (one entry per input, in order). The router
describes what arrived as ``tensor_checks.TensorIn`` so the checks are the HTTP side's; it forwards the
message itself (only its model name and version change) and reads the predicted labels from the answer.
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2 as pb

from serving.router.errors import BadRequest
from serving.router.tensor_checks import ELEMENT_SIZE, TensorIn, count_binary
from serving.router.tensor_read import bytes_elements

CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents", "BYTES": "bytes_contents"}
"""The typed ``InferTensorContents`` field of each datatype (FP16 and BF16 travel only as raw bytes)."""


def parameter_value(p: pb.InferParameter) -> Any:
    """An ``InferParameter`` as the plain Python value it holds (None when unset)."""
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def parameters_of(params) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as a dict of plain values."""
    return {k: parameter_value(v) for k, v in params.items()}


def _count_contents(t: pb.ModelInferRequest.InferInputTensor) -> int:
    field = CONTENTS_FIELD.get(t.datatype)
    used = [f.name for f, _ in t.contents.ListFields()]
    if field is None:
        if t.datatype in ELEMENT_SIZE and used:
            raise BadRequest(f"input {t.name!r}: {t.datatype} tensors travel in raw_input_contents, not {used[0]}")
        return 0  # an unknown datatype: check_request names it
    wrong = [f for f in used if f != field]
    if wrong:
        raise BadRequest(f"input {t.name!r}: a {t.datatype} tensor's elements go in contents.{field}, got {wrong[0]}")
    return len(getattr(t.contents, field))


def tensors_in(request: pb.ModelInferRequest) -> list[TensorIn]:
    """What the request's inputs declare and hold; ``BadRequest`` when their data cannot be counted."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                         "send one per input, in the order of the inputs (or none)")
    tensors = []
    for i, t in enumerate(request.inputs):
        if raw:
            if t.HasField("contents"):
                raise BadRequest(f"input {t.name!r} has both contents and raw_input_contents; send one of them")
            count = count_binary(t.name, t.datatype, raw[i])
        else:
            count = _count_contents(t)
        tensors.append(TensorIn(t.name, t.datatype, tuple(t.shape), count))
    return tensors


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    return [o.name for o in request.outputs]


def answer_labels(response: pb.ModelInferResponse, label_output: str) -> tuple[str, ...]:
    """The predicted labels in the answer's ``label_output`` tensor; () when absent or unreadable."""
    for i, out in enumerate(response.outputs):
        if out.name != label_output:
            continue
        if i >= len(response.raw_output_contents):
            return tuple(v.decode("utf-8", "replace") for v in out.contents.bytes_contents)
        return tuple(bytes_elements(response.raw_output_contents[i]))
    return ()


def tag_answer(response: pb.ModelInferResponse, variant: str) -> None:
    """Name the arm that served the answer in its ``parameters["variant"]``."""
    response.parameters["variant"].string_param = variant
