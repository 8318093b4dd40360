"""The parts of the KServe v2 HTTP protocol the router reads and writes.

Requests and answers are JSON, or a JSON header followed by raw tensor bytes (Triton's binary tensor
extension, announced by the ``Inference-Header-Content-Length`` header; ``tritonclient.http`` uses it
by default). The router parses the JSON header with ``orjson`` (bounded nesting: deeper than 1024 levels
is a 400), checks every input's structure, element types and binary lengths, then forwards the request
bytes unchanged; it only rewrites the answer's JSON header to add ``parameters.variant``. Binary tensor
data passes through untouched.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from serving.router.errors import BadRequest
from serving.router.http_upstream import Answer
from serving.router.tensor_checks import TensorIn, check_json_data, check_request, check_shape, count_binary
from serving.router.tensor_read import bytes_elements


@dataclass(frozen=True)
class InferRequest:
    """A parsed v2 inference request: its JSON header, what it carries, and the bytes to forward."""

    header: dict[str, Any]
    body: bytes
    header_length: int | None
    tensors: tuple[TensorIn, ...]
    outputs: tuple[str, ...]

    @property
    def parameters(self) -> dict[str, Any]:
        p = self.header.get("parameters")
        return p if isinstance(p, dict) else {}

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.tensors]


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression)."""
    if not content_encoding or content_encoding == "identity":
        return body
    try:
        if content_encoding == "gzip":
            return gzip.decompress(body)
        if content_encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error) as e:
        raise BadRequest(f"body is not valid {content_encoding} data: {e}") from None
    raise BadRequest(f"unsupported Content-Encoding {content_encoding!r}; expected gzip, deflate or none")


def _header_length(body: bytes, header_length: str | None) -> int | None:
    if header_length is None:
        return None
    try:
        hl = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header_length!r:.40}") from None
    if not 0 < hl <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {hl} is outside the body's {len(body)} bytes")
    return hl


def _load_header(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("empty request body; expected a v2 inference request: {\"inputs\": [...]}")
    try:
        header = orjson.loads(raw)  # nesting deeper than 1024 is a JSONDecodeError, not a RecursionError
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON in the request body: {e}") from None
    if not isinstance(header, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(header).__name__}")
    if "id" in header and not isinstance(header["id"], str):
        raise BadRequest(f"\"id\" must be a string, got {header['id']!r:.40}")
    return header


def _tensor(i: int, inp: Any, binary: memoryview, offset: int) -> tuple[TensorIn, int]:
    """One entry of ``inputs``: its description and how many binary bytes it took."""
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
        raise BadRequest(f"inputs[{i}] must be an object with a string \"name\", got {inp!r:.100}")
    name, datatype = inp["name"], inp.get("datatype")
    if not isinstance(datatype, str) or "shape" not in inp:
        raise BadRequest(f"input {name!r} needs \"datatype\" and \"shape\"")
    shape = check_shape(name, inp["shape"])
    params = inp.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(f"input {name!r}: \"parameters\" must be a JSON object, got {params!r:.40}")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in inp:
            raise BadRequest(f"input {name!r} has no \"data\" (and no binary_data_size)")
        return TensorIn(name, datatype, shape, check_json_data(name, datatype, shape, inp["data"])), 0
    if "data" in inp:
        raise BadRequest(f"input {name!r} has both \"data\" and binary_data_size; send one of them")
    if type(size) is not int or size < 0:
        raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r:.40}")
    if offset + size > len(binary):
        raise BadRequest(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                         f"({len(binary) - offset} binary bytes left)")
    return TensorIn(name, datatype, shape, count_binary(name, datatype, binary[offset : offset + size])), size


def _outputs(header: dict[str, Any]) -> tuple[str, ...]:
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise BadRequest(f"\"outputs\" must be a list of {{\"name\": ...}} objects, got {outputs!r:.80}")
    names = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise BadRequest(f"outputs[{i}] must be an object with a string \"name\", got {out!r:.80}")
        params = out.get("parameters", {})
        if not isinstance(params, dict) or not all(isinstance(v, (str, int)) for v in params.values()):
            raise BadRequest(f"outputs[{i}] ({out['name']!r}): \"parameters\" must be an object of strings, "
                             f"integers or booleans, got {params!r:.80}")
        names.append(out["name"])
    return tuple(names)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a v2 inference request and check its structure and payload; ``BadRequest`` says what is wrong.

    Checks against the model's metadata are ``check_request`` (``serving.router.tensor_checks``) with
    ``request.tensors``, ``request.outputs`` and ``request.parameters``.
    """
    hl = _header_length(body, header_length)
    header = _load_header(body if hl is None else body[:hl])
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("missing inputs: the request needs \"inputs\": [{\"name\", \"datatype\", \"shape\", \"data\"}]")
    binary = memoryview(body)[hl:] if hl is not None else memoryview(b"")
    tensors, offset = [], 0
    for i, inp in enumerate(inputs):
        tensor, used = _tensor(i, inp, binary, offset)
        tensors.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary)} bytes after the JSON header but the inputs' "
                         f"binary_data_size add up to {offset}")
    return InferRequest(header, body, hl, tuple(tensors), _outputs(header))


def validate(request: InferRequest, metadata: dict | None) -> None:
    """Check a parsed request against the arm's model metadata (``None``: not known yet)."""
    check_request(request.tensors, request.outputs, request.header.get("parameters", {}), metadata)


def _split(answer: Answer) -> tuple[dict[str, Any], bytes]:
    if answer.header_length is None:
        return orjson.loads(answer.content), b""
    return orjson.loads(answer.content[: answer.header_length]), answer.content[answer.header_length :]


def answer_labels(header: dict[str, Any], binary: bytes, label_output: str) -> tuple[str, ...]:
    """The predicted labels in an answer's ``label_output`` tensor (JSON or binary); () when absent."""
    offset = 0
    for out in header.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out.get("name") == label_output:
            if "data" in out:
                return tuple(str(x) for x in out["data"])
            if size is not None:
                return tuple(bytes_elements(binary[offset : offset + size]))
            return ()
        offset += size or 0
    return ()


def tag_answer(answer: Answer, variant: str, label_output: str) -> tuple[bytes, int | None, tuple[str, ...]]:
    """Add ``parameters.variant`` to the answer; return (body, header length or None, predicted labels)."""
    header, binary = _split(answer)
    labels = answer_labels(header, binary, label_output)
    params = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    header["parameters"] = {**params, "variant": variant}
    head = orjson.dumps(header)
    if answer.header_length is None:
        return head, None, labels
    return head + binary, len(head), labels


def labels_of(answer: Answer, label_output: str) -> tuple[str, ...]:
    """The predicted labels of an answer that is not forwarded (the shadow's)."""
    header, binary = _split(answer)
    return answer_labels(header, binary, label_output)
