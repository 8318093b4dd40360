"""Where the router's gRPC requests go (``grpc_upstream``), and the gRPC pieces that need no server."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as pb

from experiments.errors import ExperimentError
from experiments.spec import experiment_from_dict
from serving.router.config import RouterConfig
from serving.router.errors import BadRequest
from serving.router.grpc_codec import answer_labels, parameters_of, tensors_in


def spec(**extra) -> dict:
    return {"name": "ab", "upstream": "http://10.0.0.5:9000",
            "arms": [{"name": "control", "model": "m", "version": "1"},
                     {"name": "treatment", "model": "m", "version": "2", **extra.pop("treatment", {})}], **extra}


def test_grpc_address_is_derived_from_the_http_upstream_unless_given():
    exp = experiment_from_dict(spec())
    assert exp.grpc_upstream_of(exp.arms[0]) == "10.0.0.5:8001"  # Triton's default gRPC port on the same host
    exp = experiment_from_dict(spec(grpc_upstream="10.0.0.5:9001"))
    assert [exp.grpc_upstream_of(a) for a in exp.arms] == ["10.0.0.5:9001", "10.0.0.5:9001"]


def test_an_arm_on_its_own_triton_does_not_take_the_experiments_grpc_address():
    exp = experiment_from_dict(spec(grpc_upstream="10.0.0.5:9001", treatment={"upstream": "http://10.0.0.6:8000"}))
    assert exp.grpc_upstream_of(exp.arms[1]) == "10.0.0.6:8001"
    exp = experiment_from_dict(spec(treatment={"upstream": "http://10.0.0.6:8000", "grpc_upstream": "10.0.0.6:7001"}))
    assert exp.grpc_upstream_of(exp.arms[1]) == "10.0.0.6:7001"


def test_bad_grpc_addresses_and_ports_are_named():
    with pytest.raises(ExperimentError, match=r"grpc_upstream must be a gRPC address host:port.*'http://x:1'"):
        experiment_from_dict(spec(grpc_upstream="http://x:1"))
    with pytest.raises(ExperimentError, match="grpc_port must be in 1..65535.*differ from port 8080, got 8080"):
        RouterConfig(experiment="x.yaml", grpc_port=8080)
    assert RouterConfig(experiment="x.yaml", grpc_port=0).grpc_port == 0  # no gRPC endpoint


def test_tensors_in_counts_raw_and_typed_contents():
    request = pb.ModelInferRequest()
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[2, 1])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    assert [(t.name, t.shape, t.count) for t in tensors_in(request)] == [("TEXT", (2, 1), 2)]
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="X", datatype="INT32", shape=[3]).contents.int_contents.extend([1, 2, 3])
    assert tensors_in(typed)[0].count == 3
    wrong = pb.ModelInferRequest()
    wrong.inputs.add(name="X", datatype="INT32", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(BadRequest, match="INT32 tensor's elements go in contents.int_contents, got fp32_contents"):
        tensors_in(wrong)
    request.raw_input_contents.append(b"")
    with pytest.raises(BadRequest, match="raw_input_contents has 2 entries for 1 inputs"):
        tensors_in(request)


def test_parameters_and_labels_of_an_answer():
    request = pb.ModelInferRequest()
    request.parameters["user_id"].string_param = "u7"
    request.parameters["n"].int64_param = 3
    assert parameters_of(request.parameters) == {"user_id": "u7", "n": 3}
    answer = pb.ModelInferResponse()
    answer.outputs.add(name="PROBABILITIES")
    answer.outputs.add(name="LABEL")
    answer.raw_output_contents.extend([b"\x00" * 8, b"\x08\x00\x00\x00positive"])
    assert answer_labels(answer, "LABEL") == ("positive",)
    assert answer_labels(answer, "NOPE") == ()
