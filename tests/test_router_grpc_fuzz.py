"""Property-based tests of the router's gRPC front door: generated ``ModelInferRequest`` messages, valid and
broken, against the real router on the real tritonserver (the tiny model, two versions).

Broken in every way the message allows: datatypes (known, unknown, blank), shapes (negative, huge, not
matching the data), ``raw_input_contents`` of the wrong length or count, typed ``contents`` of the wrong
kind, both kinds at once, parameters of every type, requested outputs that do not exist, names, versions,
ids, and messages over the router's size limit. Every answer must be OK or a client-error status
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED...), never INTERNAL / UNAVAILABLE / UNKNOWN while Triton
is healthy; afterwards the router is up and ready, counted no server error, and both arms still serve.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from export.contract import CONTRACT
from serving.router.grpc_protocol import CONTENTS_FIELD
from serving.router.process import RouterProcess
from tests.test_router_fuzz import MAX_BATCH, MODEL, bytes_tensor, server_errors

pytestmark = pytest.mark.e2e

EXPERIMENT = "grpc-fuzz-ab"
MAX_BODY = 64 << 10  # the router's --max-body-bytes here: a "huge" message costs little to build
CLIENT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION}
"""What the router may answer a caller while its upstream is healthy."""
DATATYPES = ["BYTES", "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT32", "UINT64", "FP16", "BF16",
             "FP32", "FP64", "STRING", "bytes", ""]
CONTENTS = {  # each typed field with values its protobuf type holds
    "bool_contents": st.lists(st.booleans(), max_size=4),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=4),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=4),
    "fp32_contents": st.lists(st.floats(width=32), max_size=4),
    "fp64_contents": st.lists(st.floats(), max_size=4),
    "bytes_contents": st.lists(st.binary(max_size=16), max_size=4),
}
TEXTS = st.text(min_size=1, max_size=40).filter(str.strip)
PARAMETERS = st.dictionaries(
    st.sampled_from(["x-user-id", "sequence_id", "priority", "binary_data_output"])
    | st.text(string.ascii_lowercase, min_size=1, max_size=8),
    st.tuples(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]),
              st.integers(0, 2**31)), max_size=3)
OUTPUTS = st.lists(st.sampled_from([CONTRACT.output_label, CONTRACT.output_probabilities, "nope", ""]), max_size=3)


def set_parameters(params, drawn: dict) -> None:
    for name, (kind, value) in drawn.items():
        setattr(params[name], kind, {"bool_param": bool(value % 2), "string_param": str(value),
                                     "double_param": value / 7}.get(kind, value))


@st.composite
def valid_requests(draw) -> pb.ModelInferRequest:
    """What ``tritonclient.grpc`` sends: BYTES texts as raw contents (or, as other clients do, typed)."""
    texts = [t.encode() for t in draw(st.lists(TEXTS, min_size=1, max_size=MAX_BATCH))]
    request = pb.ModelInferRequest(model_name=EXPERIMENT, id=draw(st.text(string.printable, max_size=20)))
    tensor = request.inputs.add(name=CONTRACT.input_text, datatype="BYTES", shape=[len(texts), 1])
    if draw(st.booleans()):
        request.raw_input_contents.append(bytes_tensor(texts))
    else:
        tensor.contents.bytes_contents.extend(texts)
    for name in draw(st.lists(st.sampled_from([CONTRACT.output_label, CONTRACT.output_probabilities]),
                              unique=True, max_size=2)):
        request.outputs.add(name=name)
    set_parameters(request.parameters, draw(st.dictionaries(st.just("x-user-id"),
                                                            st.tuples(st.just("string_param"), st.integers(0, 99)),
                                                            max_size=1)))
    return request


SHAPES = st.lists(st.integers(-3, MAX_BATCH + 2) | st.sampled_from([2**31, 2**62, -(2**63)]), max_size=4)
DATA = st.one_of(
    st.tuples(st.just("raw"), st.binary(max_size=48)),
    st.tuples(st.just("raw"), st.lists(st.binary(max_size=12), max_size=4).map(bytes_tensor)),
    st.tuples(st.just("typed"), st.sampled_from(sorted(CONTENTS)).flatmap(lambda f: st.tuples(st.just(f), CONTENTS[f]))),
    st.tuples(st.just("both"), st.lists(st.binary(max_size=12), min_size=1, max_size=2)),
    st.tuples(st.just("none"), st.none()),
)
TENSORS = st.tuples(st.sampled_from([CONTRACT.input_text, CONTRACT.input_text, "other", ""]),
                    st.sampled_from(DATATYPES), SHAPES, DATA)


@st.composite
def broken_requests(draw) -> pb.ModelInferRequest:
    """Anything the message can hold, mostly aimed at the experiment so it reaches validation."""
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from([EXPERIMENT] * 4 + [MODEL, "nope", ""])),
                                   model_version=draw(st.sampled_from([""] * 4 + ["1", "x"])),
                                   id=draw(st.sampled_from(["", "r-1", "x" * 300])))
    raw: list[bytes] = []
    for name, datatype, shape, (kind, data) in draw(st.lists(TENSORS, max_size=3)):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if kind == "raw":
            raw.append(data)
        elif kind == "typed":
            getattr(tensor.contents, data[0]).extend(data[1])
        elif kind == "both":
            tensor.contents.bytes_contents.extend(data)
            raw.append(bytes_tensor(data))
    extra = draw(st.sampled_from([0] * 6 + [1, -1, "huge"]))  # one raw entry too many, too few, or over the limit
    if extra == "huge":
        raw.append(b"\0" * (MAX_BODY + 1))
    elif extra == 1:
        raw.append(b"")
    elif extra == -1 and raw:
        raw.pop()
    request.raw_input_contents.extend(raw)
    for name in draw(OUTPUTS):
        request.outputs.add(name=name)
    set_parameters(request.parameters, draw(PARAMETERS))
    return request


@pytest.fixture(scope="module")
def router(triton, tmp_path_factory) -> Iterator[RouterProcess]:
    folder: Path = tmp_path_factory.mktemp("grpc-fuzz-router")
    (folder / "experiment.yaml").write_text(yaml.safe_dump({
        "name": EXPERIMENT, "upstream": triton.http_url, "timeout_s": 5.0, "fallback": "control",
        "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": MODEL, "version": "1", "weight": 50},
                 {"name": "treatment", "model": MODEL, "version": "2", "weight": 50}]}))
    with RouterProcess(folder / "experiment.yaml", log_file=folder / "router.log", triton_grpc_url=triton.grpc_url,
                       extra_args=["--log-level", "warning", "--max-body-bytes", str(MAX_BODY)]) as r:
        yield r


@pytest.fixture(scope="module")
def stub(router) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(router.grpc_address, options=[("grpc.max_send_message_length", -1)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def answer_code(stub, request: pb.ModelInferRequest, key: str) -> tuple[grpc.StatusCode, str]:
    try:
        stub.ModelInfer(request, timeout=60, metadata=(("x-user-id", key),))
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def test_every_message_gets_ok_or_a_client_error(router, stub):
    codes: Counter = Counter()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(valid_requests(), broken_requests()), st.text(string.ascii_letters, max_size=6))
    def check(request, key):
        code, details = answer_code(stub, request, key)
        assert code in CLIENT_CODES, (code, details, str(request)[:500])
        assert code == grpc.StatusCode.OK or details, code  # every refusal says why
        codes[code] += 1

    check()
    assert codes[grpc.StatusCode.OK] and codes[grpc.StatusCode.INVALID_ARGUMENT], codes
    assert router.is_running()
    assert server_errors(router) == 0
    client = grpcclient.InferenceServerClient(router.grpc_address)
    try:
        assert client.is_server_ready()
        text = grpcclient.InferInput(CONTRACT.input_text, [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"a fine film"]], dtype=np.object_))
        variants = {client.infer(EXPERIMENT, [text], headers={"x-user-id": f"u{i}"}).get_response()
                    .parameters["variant"].string_param for i in range(40)}
    finally:
        client.close()
    assert variants == {"control", "treatment"}  # no breaker opened: both arms still serve


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_requests())
def test_every_valid_message_is_answered(stub, request):
    code, details = answer_code(stub, request, "user-1")
    assert code == grpc.StatusCode.OK, details


@pytest.mark.parametrize("field", sorted(set(CONTENTS) - {CONTENTS_FIELD["BYTES"]}))
def test_typed_contents_of_the_wrong_kind_are_refused(stub, field):
    """The model's only input is BYTES text: numbers or booleans in a typed field are the caller's mistake,
    named in the answer (the model has no INT8/INT16 input whose range the router could check)."""
    request = pb.ModelInferRequest(model_name=EXPERIMENT)
    tensor = request.inputs.add(name=CONTRACT.input_text, datatype="BYTES", shape=[1, 1])
    getattr(tensor.contents, field).append({"bool_contents": True}.get(field, 1))
    code, details = answer_code(stub, request, "user-1")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details and "bytes_contents" in details, details
