"""Protocol-neutral checks of one KServe v2 inference request against the model's metadata.

The HTTP front door (``serving.router.http_codec``) and the gRPC one decode their own wire format, then
describe what arrived with ``TensorIn`` and call ``check_request``; both answer the same
``BadRequest`` (400 over HTTP, INVALID_ARGUMENT over gRPC) with a message that names the field:

    from serving.router.tensor_checks import TensorIn, check_request

    inputs = [TensorIn(name="TEXT", datatype="BYTES", shape=(2, 1), count=2)]
    check_request(inputs, outputs=["LABEL"], parameters={"user_id": "u7"}, metadata=upstream_metadata)

* ``metadata`` is the arm's model metadata as Triton's ``GET /v2/models/NAME[/versions/V]`` returns it
  (``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``, ``-1`` for a variable dimension;
  over gRPC, ``MessageToDict(ModelMetadataResponse)`` gives the same keys). ``None`` when the metadata
  is not known yet: then only the checks that need no metadata run.
* ``TensorIn.count`` is the number of elements actually sent: the flattened length of JSON ``data``,
  the number of length-prefixed strings of a binary BYTES tensor, or ``binary size / element size``.
  Element *types* (a number where BYTES text is expected, a null, a fraction in an INT32 tensor) are
  checked where the payload is decoded; ``check_json_data`` does it for JSON ``data`` lists and
  ``count_binary`` for raw tensor bytes, so the gRPC side can reuse them for its ``contents`` and
  ``raw_input_contents``.
* ``parameters`` are the request-level parameters as plain Python values: str, int or bool, the types
  Triton accepts (it answers "parameter 'x' has invalid type" for anything else, floats included).
* What the checks need from ``metadata`` (``ModelSpec``: inputs by name, required inputs, output names) is
  derived once per metadata object and kept (``SpecCache``), not on every request: the upstreams cache
  one metadata dict per model version, so the same dict comes back request after request.

Nothing here raises anything but ``BadRequest``, whatever the input.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.router.errors import BadRequest

ELEMENT_SIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
                "INT64": 8, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8}
"""Bytes per element of each fixed-size v2 datatype."""
DATATYPES = frozenset(ELEMENT_SIZE) | {"BYTES"}
"""Every v2 datatype."""
MAX_RANK = 16
"""The most dimensions a tensor may have (Triton's own limit is far above any model here)."""
MAX_ELEMENTS = 1 << 24
"""The most elements one input may declare; a larger shape is refused before anything is allocated."""
_INT_RANGE = {"UINT8": (0, 2**8 - 1), "UINT16": (0, 2**16 - 1), "UINT32": (0, 2**32 - 1), "UINT64": (0, 2**64 - 1),
              "INT8": (-(2**7), 2**7 - 1), "INT16": (-(2**15), 2**15 - 1), "INT32": (-(2**31), 2**31 - 1),
              "INT64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class DeclaredInput:
    """One input as the model's metadata declares it."""

    datatype: str | None
    shape: tuple[int, ...]
    """-1 for a dimension of any size."""


@dataclass(frozen=True)
class ModelSpec:
    """What ``check_request`` reads from a model's metadata, derived once."""

    inputs: dict[str, DeclaredInput]
    required: tuple[str, ...]
    """Inputs the model cannot do without (not ``optional``)."""
    outputs: frozenset[str]

    @classmethod
    def from_metadata(cls, metadata: dict) -> ModelSpec:
        declared = {i["name"]: i for i in metadata.get("inputs", [])}
        return cls({name: DeclaredInput(i.get("datatype"), tuple(int(d) for d in i.get("shape", [])))
                    for name, i in declared.items()},
                   tuple(n for n, i in declared.items() if not i.get("optional")),
                   frozenset(o["name"] for o in metadata.get("outputs", [])))


class SpecCache:
    """``ModelSpec`` per metadata dict, keyed by the dict's identity. An entry holds its dict, so while it
    is cached no other dict can take its id; past ``size`` entries the cache starts over."""

    def __init__(self, size: int = 64):
        self.size = size
        self._specs: dict[int, tuple[dict, ModelSpec]] = {}

    def get(self, metadata: dict) -> ModelSpec:
        entry = self._specs.get(id(metadata))
        if entry is not None and entry[0] is metadata:
            return entry[1]
        if len(self._specs) >= self.size:
            self._specs.clear()
        spec = ModelSpec.from_metadata(metadata)
        self._specs[id(metadata)] = (metadata, spec)
        return spec


_SPECS = SpecCache()
"""The process's spec cache: a cache in the sense of ``functools.lru_cache``, never read for state."""


@dataclass(frozen=True)
class TensorIn:
    """One input tensor as it arrived: declared name, datatype and shape, and how many elements came."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A declared shape as a tuple of non-negative ints, or ``BadRequest`` naming the input."""
    if not isinstance(shape, (list, tuple)):
        raise BadRequest(f"input {name!r}: \"shape\" must be a list of non-negative integers, got {shape!r:.80}")
    if len(shape) > MAX_RANK:
        raise BadRequest(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_RANK} allowed")
    for i, dim in enumerate(shape):
        if type(dim) is not int or dim < 0:
            raise BadRequest(f"input {name!r}: shape[{i}] is {dim!r:.40}; expected a non-negative integer")
    if math.prod(shape) > MAX_ELEMENTS:
        raise BadRequest(f"input {name!r}: shape {list(shape)} declares {math.prod(shape)} elements; "
                         f"at most {MAX_ELEMENTS} allowed")
    return tuple(shape)


def _check_element(name: str, datatype: str, index: int, value: Any) -> None:
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise BadRequest(f"input {name!r}: data[{index}] is {_kind(value)}; a BYTES tensor takes strings")
    elif datatype == "BOOL":
        if not isinstance(value, bool):
            raise BadRequest(f"input {name!r}: data[{index}] is {_kind(value)}; a BOOL tensor takes true/false")
    elif datatype in _INT_RANGE:
        low, high = _INT_RANGE[datatype]
        if type(value) is not int or not low <= value <= high:
            raise BadRequest(f"input {name!r}: data[{index}] is {_kind(value)}; a {datatype} tensor takes "
                             f"integers in [{low}, {high}]")
    elif type(value) not in (int, float):
        raise BadRequest(f"input {name!r}: data[{index}] is {_kind(value)}; a {datatype} tensor takes numbers")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return f"{type(value).__name__} {value!r:.40}"


def check_json_data(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> int:
    """Check JSON ``data`` against its datatype and shape; return the number of elements.

    ``data`` is either flat (a list of ``prod(shape)`` elements) or nested exactly as ``shape``.
    """
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: \"data\" must be a JSON array, got {_kind(data)}")
    nested = bool(data) and isinstance(data[0], list)
    flat = _flatten(name, shape, data) if nested else data
    for i, value in enumerate(flat):
        _check_element(name, datatype, i, value)
    return len(flat)


def _flatten(name: str, shape: tuple[int, ...], data: list) -> list:
    """Nested ``data`` that must follow ``shape`` level by level (iterative: no recursion on input)."""
    level = [data]
    for depth, dim in enumerate(shape):
        nxt: list = []
        for item in level:
            if not isinstance(item, list) or len(item) != dim:
                got = f"{len(item)} elements" if isinstance(item, list) else _kind(item)
                raise BadRequest(f"input {name!r}: nested \"data\" does not match shape {list(shape)}: "
                                 f"level {depth} has {got}, expected {dim}")
            nxt.extend(item)
        level = nxt
    return level


def count_binary(name: str, datatype: str, raw: bytes | memoryview) -> int:
    """The number of elements in raw tensor bytes, or ``BadRequest`` when the bytes cannot be such a tensor.

    BYTES tensors are 4-byte little-endian lengths each followed by that many bytes.
    """
    if datatype != "BYTES":
        size = ELEMENT_SIZE.get(datatype)
        if size is None:
            raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}; expected one of {sorted(DATATYPES)}")
        if len(raw) % size:
            raise BadRequest(f"input {name!r}: {len(raw)} bytes of binary data is not a whole number of "
                             f"{datatype} elements ({size} bytes each)")
        return len(raw) // size
    count, pos, end = 0, 0, len(raw)
    while pos < end:
        if pos + 4 > end:
            raise BadRequest(f"input {name!r}: binary BYTES data ends inside the length prefix of element {count}")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4 + n
        if pos > end:
            raise BadRequest(f"input {name!r}: binary BYTES element {count} declares {n} bytes but only "
                             f"{end - (pos - n)} remain")
        count += 1
    return count


def _check_parameters(parameters: Any) -> None:
    if not isinstance(parameters, Mapping):
        raise BadRequest(f"\"parameters\" must be a JSON object, got {_kind(parameters)}")
    for key, value in parameters.items():
        if not isinstance(value, (str, bool, int)):
            raise BadRequest(f"parameters[{key!r}] is {_kind(value)}; a parameter is a string, integer or boolean")


def _check_tensor(t: TensorIn, declared: DeclaredInput | None) -> None:
    if t.datatype not in DATATYPES:
        raise BadRequest(f"input {t.name!r}: unknown datatype {t.datatype!r}; expected one of {sorted(DATATYPES)}")
    shape = check_shape(t.name, t.shape)
    if math.prod(shape) != t.count:
        raise BadRequest(f"input {t.name!r}: shape {list(shape)} holds {math.prod(shape)} elements but "
                         f"the request carries {t.count}")
    if declared is None:
        return
    if t.datatype != declared.datatype:
        raise BadRequest(f"input {t.name!r}: datatype {t.datatype} does not match the model's {declared.datatype}")
    want = declared.shape
    if len(want) != len(shape) or any(w != -1 and w != s for w, s in zip(want, shape, strict=True)):
        raise BadRequest(f"input {t.name!r}: shape {list(shape)} does not match the model's {list(want)} "
                         "(-1: any size)")


def check_request(inputs: Sequence[TensorIn], outputs: Sequence[str], parameters: Any,
                  metadata: dict | None) -> None:
    """Raise ``BadRequest`` unless the request is one the model can take (see the module docstring)."""
    if not inputs:
        raise BadRequest("missing inputs: the request needs at least one input tensor")
    _check_parameters(parameters)
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise BadRequest(f"input(s) {dupes} appear more than once; each input is sent once")
    spec = _SPECS.get(metadata) if metadata else None
    declared = spec.inputs if spec is not None else None
    if spec is not None:
        missing = [n for n in spec.required if n not in names]
        if missing:
            raise BadRequest(f"missing input(s) {missing}; the model expects {sorted(spec.inputs)}, got {names}")
    for t in inputs:
        if declared is not None and t.name not in declared:
            raise BadRequest(f"unknown input {t.name!r}; the model takes {sorted(declared)}")
        _check_tensor(t, None if declared is None else declared[t.name])
    if len(set(outputs)) != len(outputs):
        raise BadRequest(f"requested outputs {list(outputs)} name an output more than once")
    if spec is not None:
        unknown = [o for o in outputs if o not in spec.outputs]
        if unknown:
            raise BadRequest(f"unknown requested output(s) {unknown}; the model has {sorted(spec.outputs)}")
