"""A flood of malformed gRPC requests hurts only its sender (the gRPC twin of test_router_flood.py).

Real processes: tritonserver on the tiny model (two versions), the router as a subprocess on a 70/30
experiment with a fallback arm, its gRPC endpoint forwarding to Triton's gRPC port. Four ``tritonclient.grpc``
clients send good requests (paced); once the router has answered some, one client sends ``FLOOD_COUNT``
malformed ``ModelInferRequest`` messages paced at ``FLOOD_RATE`` a second (a negative dimension, a wrong element
count, numbers where BYTES text is expected, an unknown datatype, a raw entry too many, a blank text the model
itself refuses, an unknown output, an unknown experiment, a message over the size limit); the good clients
are stopped only after the router has answered more good requests after the flood's last answer
(``tests.flood.flood_amid_good_traffic``: an order of events, not a clock). Every malformed message must get
its client-error status with a message, every good request must succeed, the arm shares must stay as set, no
breaker may open (no fallback, no server error), and the router's client-error counters must hold exactly
what the flooding client was answered.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from export.contract import CONTRACT
from tests.flood import (
    FLOOD_COUNT,
    FLOOD_RATE,
    assert_shares,
    counters_moved,
    flood_amid_good_traffic,
    flood_stack,
    router_counters,
)
from tests.test_router_fuzz import bytes_tensor

pytestmark = pytest.mark.e2e

EXPERIMENT = "grpc-flood-ab"
GOOD_CLIENTS = 4
GOOD_RATE = 8.0  # good requests per second per client (paced, as Locust's users are: not a closed loop)
MAX_BODY = 64 << 10
INVALID, NOT_FOUND, TOO_LARGE = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)


def _text(texts: list[bytes], shape=(1, 1), datatype: str = "BYTES", model: str = EXPERIMENT,
          output: str | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=CONTRACT.input_text, datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(bytes_tensor(texts))
    if output is not None:
        request.outputs.add(name=output)
    return request


def _numbers() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=EXPERIMENT)
    request.inputs.add(name=CONTRACT.input_text, datatype="BYTES", shape=[1, 1]).contents.int_contents.append(5)
    return request


def _raw_too_many() -> pb.ModelInferRequest:
    request = _text([b"a film"])
    request.raw_input_contents.append(b"")
    return request


MALFORMED = {  # name -> (message, the status the router must answer)
    "negative dimension": (_text([b"a film"], shape=(-1, 1)), INVALID),
    "wrong element count": (_text([b"a film"], shape=(2, 1)), INVALID),
    "numbers as text": (_numbers(), INVALID),
    "unknown datatype": (_text([b"a film"], datatype="STRING"), INVALID),
    "raw entry too many": (_raw_too_many(), INVALID),
    "blank text (refused by the model)": (_text([b" "]), INVALID),
    "unknown output": (_text([b"a film"], output="nope"), INVALID),
    "unknown experiment": (_text([b"a film"], model="nope"), NOT_FOUND),
    "oversize message": (_text([b"x" * (MAX_BODY + 1)]), TOO_LARGE),
}
COUNTED = {INVALID: "client_400", NOT_FOUND: "client_404"}
"""The router's counter of each refusal it makes itself (an oversize message is refused by gRPC first)."""


@pytest.fixture(scope="module")
def stack(tiny_onnx_dir, tmp_path_factory) -> Iterator[dict]:
    with flood_stack(tiny_onnx_dir, tmp_path_factory.mktemp("grpc-flood"), EXPERIMENT,
                     extra_args=["--max-body-bytes", str(MAX_BODY)]) as (triton, router):
        yield {"triton": triton, "router": router}


class Flood:
    """One gRPC client sending the malformed messages round-robin, ``FLOOD_COUNT`` of them paced at ``rate`` a
    second, open loop (each sent without waiting for the answer before, as a flooding client does); ``run``
    returns once every one is answered."""

    def __init__(self, address: str, rate: float):
        self.address, self.interval = address, 1.0 / rate
        self.answers: Counter = Counter()  # (name, status code)
        self.unexpected: list[str] = []

    def run(self) -> None:
        names = list(MALFORMED)
        start = time.monotonic()
        with grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", -1)]) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = []
            for i in range(FLOOD_COUNT):
                name = names[i % len(names)]
                calls.append((name, stub.ModelInfer.future(MALFORMED[name][0], timeout=60)))
                time.sleep(max(0.0, start + (i + 1) * self.interval - time.monotonic()))
            for name, call in calls:
                self._answered(name, call)

    def _answered(self, name: str, call: grpc.Future) -> None:
        try:
            call.result()
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        self.answers[(name, code)] += 1
        if code != MALFORMED[name][1] or not details:
            self.unexpected.append(f"{name}: {code} {details!r:.200}")


def good_traffic(address: str, stop: threading.Event, served: Counter, failures: list[str]) -> None:
    """Good requests through ``tritonclient.grpc``, ``GOOD_RATE`` a second until ``stop`` is set; the arm of
    each answer counted."""
    client = grpcclient.InferenceServerClient(address)
    text = grpcclient.InferInput(CONTRACT.input_text, [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"a warm, funny film"]], dtype=np.object_))
    start, i = time.monotonic(), 0
    try:
        while not stop.wait(max(0.0, start + i / GOOD_RATE - time.monotonic())):
            i += 1
            try:
                result = client.infer(EXPERIMENT, [text], client_timeout=30)
                served[result.get_response().parameters["variant"].string_param] += 1
            except Exception as e:  # every kind of failure is the test's finding
                failures.append(f"{type(e).__name__}: {e}")
    finally:
        client.close()


def test_a_malformed_grpc_flood_hurts_only_its_sender(stack):
    router = stack["router"]
    before = router_counters(router.url)
    flood, stop = Flood(router.grpc_address, FLOOD_RATE), threading.Event()
    served: Counter = Counter()
    failures: list[str] = []
    clients = [threading.Thread(target=good_traffic, args=(router.grpc_address, stop, served, failures))
               for _ in range(GOOD_CLIENTS)]
    try:
        for c in clients:
            c.start()
        flood_amid_good_traffic(router.url, flood.run)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=120)
    assert not any(c.is_alive() for c in clients)
    # every malformed message was answered, with its client-error status and a message
    assert sum(flood.answers.values()) == FLOOD_COUNT, flood.answers
    assert not flood.unexpected, flood.unexpected[:10]
    # every good request succeeded, on the arms the experiment sets, in its shares
    assert not failures, failures[:5]
    assert_shares(served)
    # no breaker opened: no fallback, no server error; the client errors are exactly the flood's answers
    moved = counters_moved(before, router_counters(router.url))
    counted = Counter({COUNTED[code]: 0 for code in COUNTED})
    for (_, code), count in flood.answers.items():
        if code in COUNTED:
            counted[COUNTED[code]] += count
    assert moved == dict(counted), (moved, flood.answers)
