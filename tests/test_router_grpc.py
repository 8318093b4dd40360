"""End to end over gRPC: the real tritonserver, the real router (HTTP and gRPC in one process), and
``tritonclient.grpc`` pointed at the router's ``--grpc-port``. Every process started here is stopped.
"""

from __future__ import annotations

import csv
import queue
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from export.contract import CONTRACT
from serving import client as client_cli
from serving.client import text_input
from serving.router.assignment import Assigner
from serving.router.config import experiment_from_dict
from serving.router.process import RouterProcess
from tests.test_router_e2e import MODEL, TEXTS, TOKEN, make_router, metric, spec
from tunestack.procs import ChildProcess, free_port, wait_for

pytestmark = pytest.mark.e2e

EXPERIMENT = "sentiment-ab"
VERSION_OF = {"control": "1", "treatment": "2"}


@contextmanager
def grpc_router(folder: Path, triton, experiment: dict) -> Iterator[RouterProcess]:
    """A router on ``experiment`` whose gRPC endpoint forwards to ``triton``'s gRPC port."""
    router = make_router(folder, experiment, "--triton-grpc-url", triton.grpc_url)
    try:
        yield router.start()
    finally:
        router.stop()


@pytest.fixture(scope="module")
def router(triton, tmp_path_factory) -> Iterator[RouterProcess]:
    shadow = {"name": "shadow", "model": MODEL, "version": "2", "fraction": 1.0}
    experiment = spec(triton.http_url, fallback="control", shadow=shadow)
    with grpc_router(tmp_path_factory.mktemp("grpc-router"), triton, experiment) as r:
        yield r


@pytest.fixture
def rc(router) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(router.grpc_address)
    try:
        yield c
    finally:
        c.close()


def variant_of(result: grpcclient.InferResult) -> str:
    return result.get_response().parameters["variant"].string_param


def metrics(router: RouterProcess) -> str:
    return httpx.get(router.url + "/metrics", timeout=10, trust_env=False).text


def raw_request(texts: list[str], shape: list[int] | None = None, datatype: str = "BYTES") -> pb.ModelInferRequest:
    """A ModelInferRequest built by hand, to send what tritonclient would refuse to build."""
    data = np.array([t.encode() for t in texts], dtype=np.object_)
    request = pb.ModelInferRequest(model_name=EXPERIMENT)
    request.inputs.add(name=CONTRACT.input_text, datatype=datatype, shape=shape or [len(texts), 1])
    request.raw_input_contents.append(serialize_byte_tensor(data).item())
    return request


def test_health_metadata_and_config_through_the_router(rc):
    assert rc.is_server_live() and rc.is_server_ready() and rc.is_model_ready(EXPERIMENT)
    assert rc.get_server_metadata().name == "tunestack-router"
    meta = rc.get_model_metadata(EXPERIMENT)
    assert meta.name == EXPERIMENT and meta.inputs[0].name == CONTRACT.input_text and not meta.versions
    assert rc.get_model_config(EXPERIMENT).config.name == EXPERIMENT
    with pytest.raises(InferenceServerException, match="unknown experiment 'nope'"):
        rc.get_model_metadata("nope")


def test_infer_is_sticky_names_the_arm_and_is_counted(router, rc):
    expected = Assigner(experiment_from_dict(spec("http://x")))
    before = metrics(router)
    users = [f"grpc-user-{i}" for i in range(16)]
    for user in users:
        for _ in range(2):  # the same user twice: the same arm
            result = rc.infer(EXPERIMENT, [text_input(grpcclient, TEXTS)], headers={"x-user-id": user})
            arm = variant_of(result)
            assert arm == expected.assign(user, None)
            assert result.get_response().model_version == VERSION_OF[arm]
            assert result.as_numpy(CONTRACT.output_probabilities).shape[0] == len(TEXTS)
    assert {expected.assign(u, None) for u in users} == {"control", "treatment"}
    after = metrics(router)
    for arm in ("control", "treatment"):
        served = sum(2 for u in users if expected.assign(u, None) == arm)
        grew = metric(after, "router_requests_total", arm=arm) - metric(before, "router_requests_total", arm=arm)
        assert grew == served
    # every answer was copied to the shadow (after the answer), which agreed or not but answered
    wait_for(lambda: metric(metrics(router), "router_shadow_requests_total", outcome="ok")
             - metric(before, "router_shadow_requests_total", outcome="ok") == 2 * len(users), 30, "shadow copies")


def test_trailing_metadata_names_the_arm(router):
    with grpc.insecure_channel(router.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(raw_request(TEXTS[:1]), metadata=(("x-user-id", "trailer"),),
                                                   timeout=10)
    trailing = dict(call.trailing_metadata())
    assert trailing["x-variant"] == response.parameters["variant"].string_param
    assert trailing["x-request-id"]


def test_stream_infer_through_the_router(router, rc):
    expected = Assigner(experiment_from_dict(spec("http://x"))).assign("streamer", None)
    answers: queue.Queue = queue.Queue()
    rc.start_stream(callback=lambda result, error: answers.put((result, error)), headers={"x-user-id": "streamer"})
    try:
        for i in range(6):
            rc.async_stream_infer(EXPERIMENT, [text_input(grpcclient, TEXTS[:1])], request_id=f"s{i}")
        rc.async_stream_infer(EXPERIMENT, [text_input(grpcclient, [""])], request_id="bad")  # Triton refuses ""
        got = [answers.get(timeout=30) for _ in range(7)]
    finally:
        rc.stop_stream()
    errors = [str(e) for _, e in got if e is not None]
    assert len(errors) == 1 and "empty" in errors[0], errors  # the stream goes on after a refused message
    got = [(r, e) for r, e in got if e is None]
    assert sorted(r.get_response().id for r, _ in got) == [f"s{i}" for i in range(6)]
    assert {variant_of(r) for r, _ in got} == {expected}


def test_invalid_requests_get_invalid_argument_and_never_count_against_an_arm(router, rc):
    exp = experiment_from_dict(spec("http://x"))
    user = next(u for u in (f"victim-{i}" for i in range(100)) if Assigner(exp).assign(u, None) == "treatment")
    bad = [raw_request(["one"], shape=[3, 1]),           # shape says 3 elements, 1 was sent
           raw_request(["one"], shape=[1, 1], datatype="INT32"),  # not the model's datatype
           raw_request(["one"], shape=[-1, 1]),          # a negative dimension
           raw_request([""])]                            # passes the router, Triton refuses it: INVALID_ARGUMENT
    before = metrics(router)
    with grpc.insecure_channel(router.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):  # more than the breaker's 3 failures in a row, for each arm
            for request in bad:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ModelInfer(request, metadata=(("x-user-id", user),), timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:  # over --max-body-bytes (1 MiB): gRPC's own limit
            stub.ModelInfer(raw_request(["x" * (2 << 20)]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the breaker stayed closed: the user's own arm serves it, not the fallback
    assert variant_of(rc.infer(EXPERIMENT, [text_input(grpcclient, TEXTS)], headers={"x-user-id": user})) == "treatment"
    after = metrics(router)
    assert metric(after, "router_errors_total", kind="server") == metric(before, "router_errors_total", kind="server")
    assert metric(after, "router_fallbacks_total") == metric(before, "router_fallbacks_total")
    client_errors = metric(after, "router_errors_total", code="400", kind="client")
    assert client_errors - metric(before, "router_errors_total", code="400", kind="client") == 12


def test_readme_client_example_runs_through_the_router(router, capsys):
    args = ["--protocol", "grpc", "--url", router.grpc_address, "--model", EXPERIMENT, "a fine film", "a dull mess"]
    assert client_cli.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("a fine film" in lines[0] or "a dull mess" in line for line in lines)


def test_weights_from_the_http_admin_api_apply_to_grpc(triton, tmp_path):
    with grpc_router(tmp_path, triton, spec(triton.http_url, (50, 50))) as router:
        rc = grpcclient.InferenceServerClient(router.grpc_address)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            for weights, arm in (((0, 100), "treatment"), ((100, 0), "control")):
                body = {"weights": dict(zip(("control", "treatment"), weights, strict=True))}
                r = httpx.put(f"{router.url}/v2/experiments/{EXPERIMENT}/weights", json=body, headers=auth,
                              timeout=10, trust_env=False)
                assert r.status_code == 200, r.text
                for user in (f"w-{i}" for i in range(20)):
                    result = rc.infer(EXPERIMENT, [text_input(grpcclient, TEXTS[:1])], headers={"x-user-id": user})
                    assert variant_of(result) == arm
        finally:
            rc.close()


def test_sticky_by_request_parameter_over_grpc(triton, tmp_path):
    exp = spec(triton.http_url, (50, 50))
    exp["sticky"] = {"parameter": "user_id"}
    expected = Assigner(experiment_from_dict(exp))
    with grpc_router(tmp_path, triton, exp) as router:
        rc = grpcclient.InferenceServerClient(router.grpc_address)
        try:
            for user in (f"param-{i}" for i in range(20)):
                result = rc.infer(EXPERIMENT, [text_input(grpcclient, TEXTS[:1])], parameters={"user_id": user})
                assert variant_of(result) == expected.assign(user, None)
        finally:
            rc.close()


def test_locust_grpc_user_through_the_router(router, tiny_heldout, tmp_path):
    texts = tiny_heldout
    prefix = tmp_path / "locust"
    expected = Assigner(experiment_from_dict(spec("http://x")))
    arms_of = [expected.assign(f"grpc-user-0-{i}", None) for i in range(1, 41)]  # GrpcUser's user ids, in order
    users = next(n for n in range(1, 41) if len(set(arms_of[:n])) == 2)  # the fewest users that reach both arms
    arms = set(arms_of[:users])
    argv = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "-u", str(users), "-r", str(users),
            "-t", "4s", "--host", f"grpc://{router.grpc_address}", "--target", "router", "--experiment", EXPERIMENT,
            "--texts", str(texts), "--sticky-check", "fail", "--csv", str(prefix), "--stop-timeout", "5", "GrpcUser"]
    locust = ChildProcess("locust", argv, tmp_path / "locust.log", cwd=Path(__file__).parents[1]).start()
    try:
        locust.process.wait(timeout=120)
    finally:
        locust.stop()
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert arms == {"control", "treatment"}
    assert {n for n, r in rows.items() if r["Type"] == "infer"} == arms, locust.log_tail()
    assert all(r["Failure Count"] == "0" and int(r["Request Count"]) > 0 for r in rows.values()), rows


def test_dead_arm_goes_to_fallback_over_grpc(triton, tmp_path):
    exp = spec(triton.http_url, (50, 50), fallback="control")
    exp["arms"][1]["grpc_upstream"] = f"127.0.0.1:{free_port()}"  # the treatment's Triton: nothing listens there
    with grpc_router(tmp_path, triton, exp) as router:
        rc = grpcclient.InferenceServerClient(router.grpc_address)
        try:
            for user in (f"dead-{i}" for i in range(20)):
                result = rc.infer(EXPERIMENT, [text_input(grpcclient, TEXTS[:1])], headers={"x-user-id": user})
                assert variant_of(result) == "control" and result.get_response().model_version == "1"
        finally:
            rc.close()
        text = metrics(router)
    moved = metric(text, "router_fallbacks_total", from_arm="treatment", to_arm="control")
    assert moved > 0
    assert metric(text, "router_errors_total", arm="treatment", code="503", kind="server") == moved
