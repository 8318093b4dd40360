"""The parts of the KServe v2 HTTP protocol the router reads and writes.

Requests and answers are JSON, or a JSON header followed by raw tensor bytes (Triton's binary tensor
extension, announced by the ``Inference-Header-Content-Length`` header; ``tritonclient.http`` uses it
by default). The router forwards request bytes unchanged and only rewrites the answer's JSON header to
add ``parameters.variant``; binary tensor data passes through untouched.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from serving.router.errors import BadRequest
from serving.router.upstream import Answer


@dataclass(frozen=True)
class InferRequest:
    """A parsed v2 inference request: its JSON header, and the bytes to forward."""

    header: dict[str, Any]
    body: bytes
    header_length: int | None

    @property
    def parameters(self) -> dict[str, Any]:
        p = self.header.get("parameters")
        return p if isinstance(p, dict) else {}

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.header["inputs"]]


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression)."""
    if not content_encoding or content_encoding == "identity":
        return body
    try:
        if content_encoding == "gzip":
            return gzip.decompress(body)
        if content_encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, zlib.error) as e:
        raise BadRequest(f"body is not valid {content_encoding} data: {e}") from None
    raise BadRequest(f"unsupported Content-Encoding {content_encoding!r}; expected gzip, deflate or none")


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse and check a v2 inference request; ``BadRequest`` says what is wrong."""
    hl = None
    if header_length is not None:
        try:
            hl = int(header_length)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < hl <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {hl} is outside the body's {len(body)} bytes")
    raw = body if hl is None else body[:hl]
    if not raw.strip():
        raise BadRequest("empty request body; expected a v2 inference request: {\"inputs\": [...]}")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON in the request body: {e}") from None
    if not isinstance(header, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(header).__name__}")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("missing inputs: the request needs \"inputs\": [{\"name\", \"datatype\", \"shape\", \"data\"}]")
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise BadRequest(f"inputs[{i}] must be an object with a \"name\", got {inp!r:.100}")
        if not isinstance(inp.get("datatype"), str) or not isinstance(inp.get("shape"), list):
            raise BadRequest(f"input {inp['name']!r} needs \"datatype\" and \"shape\"")
        params = inp.get("parameters") if isinstance(inp.get("parameters"), dict) else {}
        if "data" not in inp and "binary_data_size" not in params:
            raise BadRequest(f"input {inp['name']!r} has no \"data\" (and no binary_data_size)")
    return InferRequest(header, body, hl)


def check_inputs(request: InferRequest, metadata: dict | None) -> None:
    """Reject a request that lacks an input the model declares (when its metadata is known)."""
    if not metadata:
        return
    required = [i["name"] for i in metadata.get("inputs", []) if not i.get("optional")]
    missing = [n for n in required if n not in request.input_names]
    if missing:
        raise BadRequest(f"missing input(s) {missing}; the model expects {required}, got {request.input_names}")


def _split(answer: Answer) -> tuple[dict[str, Any], bytes]:
    if answer.header_length is None:
        return json.loads(answer.content), b""
    return json.loads(answer.content[: answer.header_length]), answer.content[answer.header_length :]


def _decode_bytes_tensor(buf: bytes) -> list[str]:
    out, pos = [], 0
    while pos + 4 <= len(buf):
        (n,) = struct.unpack_from("<I", buf, pos)
        out.append(buf[pos + 4 : pos + 4 + n].decode("utf-8", "replace"))
        pos += 4 + n
    return out


def answer_labels(header: dict[str, Any], binary: bytes, label_output: str) -> tuple[str, ...]:
    """The predicted labels in an answer's ``label_output`` tensor (JSON or binary); () when absent."""
    offset = 0
    for out in header.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out.get("name") == label_output:
            if "data" in out:
                return tuple(str(x) for x in out["data"])
            if size is not None:
                return tuple(_decode_bytes_tensor(binary[offset : offset + size]))
            return ()
        offset += size or 0
    return ()


def tag_answer(answer: Answer, variant: str, label_output: str) -> tuple[bytes, int | None, tuple[str, ...]]:
    """Add ``parameters.variant`` to the answer; return (body, header length or None, predicted labels)."""
    header, binary = _split(answer)
    labels = answer_labels(header, binary, label_output)
    params = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    header["parameters"] = {**params, "variant": variant}
    head = json.dumps(header, separators=(",", ":")).encode()
    if answer.header_length is None:
        return head, None, labels
    return head + binary, len(head), labels


def labels_of(answer: Answer, label_output: str) -> tuple[str, ...]:
    """The predicted labels of an answer that is not forwarded (the shadow's)."""
    header, binary = _split(answer)
    return answer_labels(header, binary, label_output)
