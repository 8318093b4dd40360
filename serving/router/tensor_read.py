"""Reading tensors out of requests and answers: the elements of a binary BYTES tensor (``bytes_elements``, the
labels both codecs read), and what the drift monitor and the judge read, the input texts and the top-class
probability of each prediction, from KServe v2 HTTP (JSON or binary tensors) and gRPC messages.

Texts are decoded only for the requests the drift feed samples, and off the request path (in its worker
thread); the confidences of every answer are read after the answer is sent. Both return ``[]`` when the
tensor is absent or unreadable: the request was valid for Triton, so a surprise here is skipped, never raised.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from tritonclient.grpc import service_pb2 as pb

from tunestack.problems import is_number

_LENGTH = struct.Struct("<I")


def bytes_elements(raw: bytes | memoryview) -> list[str]:
    """A BYTES tensor in Triton's binary form: each element a 4-byte little-endian length, then its bytes."""
    out, pos, raw = [], 0, bytes(raw)
    while pos + 4 <= len(raw):
        (n,) = _LENGTH.unpack_from(raw, pos)
        out.append(raw[pos + 4:pos + 4 + n].decode("utf-8", "replace"))
        pos += 4 + n
    return out


def _flatten(data: Any, keep: Callable[[Any], bool]) -> list:
    """The leaves of nested JSON ``data`` lists that ``keep`` accepts, in order."""
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item, keep)]
    return [data] if keep(data) else []


def _is_text(x: Any) -> bool:
    return isinstance(x, str)


def http_texts(header: dict[str, Any], body: bytes, header_length: int | None, input_name: str) -> list[str]:
    """The elements of the BYTES input ``input_name`` of a parsed v2 HTTP request (JSON ``data`` or binary)."""
    offset = header_length or 0
    for inp in header.get("inputs", []):
        size = (inp.get("parameters") or {}).get("binary_data_size")
        if inp.get("name") == input_name:
            if "data" in inp:
                return _flatten(inp["data"], _is_text)
            return bytes_elements(memoryview(body)[offset:offset + size]) if size is not None else []
        offset += size or 0
    return []


def _top(values: Sequence[float], shape: Sequence[int]) -> list[float]:
    """The largest value of each row of a flat ``values`` of ``shape`` [..., width] (plain Python: for the
    few values of an answer numpy's per-call overhead costs more than the work)."""
    width = int(shape[-1]) if len(shape) else 0
    if width < 1 or not values or len(values) % width:
        return []
    return [float(max(values[i:i + width])) for i in range(0, len(values), width)]


def http_confidences(content: bytes, header_length: int | None, output_name: str) -> list[float]:
    """The top-class probability per example from the FP32 output ``output_name`` of a v2 HTTP answer."""
    try:
        header = orjson.loads(content if header_length is None else content[:header_length])
    except orjson.JSONDecodeError:
        return []
    offset = header_length or 0
    for out in header.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out.get("name") == output_name:
            if "data" in out:
                values = _flatten(out["data"], is_number)
            elif size is not None and offset + size <= len(content):
                values = struct.unpack_from(f"<{size // 4}f", content, offset)
            else:
                return []
            return _top(values, out.get("shape") or [])
        offset += size or 0
    return []


def grpc_texts(request: pb.ModelInferRequest, input_name: str) -> list[str]:
    """The elements of the BYTES input ``input_name`` of a gRPC request (raw or typed contents)."""
    for i, inp in enumerate(request.inputs):
        if inp.name != input_name:
            continue
        if i < len(request.raw_input_contents):
            return bytes_elements(request.raw_input_contents[i])
        return [v.decode("utf-8", "replace") for v in inp.contents.bytes_contents]
    return []


def grpc_confidences(response: pb.ModelInferResponse, output_name: str) -> list[float]:
    """The top-class probability per example from the FP32 output ``output_name`` of a gRPC answer."""
    for i, out in enumerate(response.outputs):
        if out.name != output_name:
            continue
        if i < len(response.raw_output_contents):
            raw = response.raw_output_contents[i]
            values = struct.unpack(f"<{len(raw) // 4}f", raw[: len(raw) // 4 * 4])
        else:
            values = list(out.contents.fp32_contents)
        return _top(values, list(out.shape))
    return []
