"""The v2 request/answer handling: binary tensors pass through, the variant is added, labels are read."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient

from export.contract import CONTRACT
from serving.client import text_input
from serving.router.errors import BadRequest
from serving.router.http_codec import decode_body, labels_of, parse_request, tag_answer, validate
from serving.router.http_upstream import Answer


def bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def binary_answer() -> Answer:
    probs = np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32).tobytes()
    labels = bytes_tensor(["positive", "negative"])
    header = {"model_name": "sentiment", "model_version": "2", "outputs": [
        {"name": CONTRACT.output_probabilities, "datatype": "FP32", "shape": [2, 2],
         "parameters": {"binary_data_size": len(probs)}},
        {"name": CONTRACT.output_label, "datatype": "BYTES", "shape": [2, 1],
         "parameters": {"binary_data_size": len(labels)}}]}
    head = json.dumps(header).encode()
    return Answer(head + probs + labels, len(head))


def test_binary_answer_is_tagged_and_readable_by_tritonclient():
    content, header_length, labels = tag_answer(binary_answer(), "treatment", CONTRACT.output_label)
    assert labels == ("positive", "negative")
    result = httpclient.InferResult.from_response_body(content, header_length=header_length)
    assert result.get_response()["parameters"] == {"variant": "treatment"}
    np.testing.assert_allclose(result.as_numpy(CONTRACT.output_probabilities), [[0.2, 0.8], [0.9, 0.1]])
    assert result.as_numpy(CONTRACT.output_label).tolist() == [[b"positive"], [b"negative"]]


def test_json_answer_is_tagged():
    header = {"outputs": [{"name": CONTRACT.output_label, "datatype": "BYTES", "shape": [1, 1], "data": ["pos"]}],
              "parameters": {"other": 1}}
    content, header_length, labels = tag_answer(Answer(json.dumps(header).encode(), None), "control", CONTRACT.output_label)
    assert header_length is None and labels == ("pos",)
    assert json.loads(content)["parameters"] == {"other": 1, "variant": "control"}
    assert labels_of(Answer(json.dumps({"outputs": []}).encode(), None), CONTRACT.output_label) == ()


def test_tritonclient_binary_request_parses():
    tensor = text_input(httpclient, ["a fine film", "dull"])
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], parameters={"user_id": "u7"})
    req = parse_request(body, str(json_size))
    assert req.input_names == [CONTRACT.input_text] and req.parameters["user_id"] == "u7"
    assert req.body == body and req.header_length == json_size
    assert req.tensors[0].count == 2 and req.tensors[0].shape == (2, 1)
    text_meta = {"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [-1, 1]}
    validate(req, {"inputs": [text_meta]})
    with pytest.raises(BadRequest, match=r"missing input\(s\) \['OTHER'\]"):
        validate(req, {"inputs": [text_meta, {"name": "OTHER", "datatype": "FP32", "shape": [-1]}]})


@pytest.mark.parametrize("body, header_length, message", [
    (b"", None, "empty request body"),
    (b"{nope", None, "malformed JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b'{"inputs": []}', None, "missing inputs"),
    (b'{"inputs": [{"name": "TEXT"}]}', None, "needs \\\"datatype\\\" and \\\"shape\\\""),
    (b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1]}]}', None, "has no \\\"data\\\""),
    (b"[" * 100_000, None, "malformed JSON in the request body: depth limit exceeded"),
    (b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": null}]}', None, "got null"),
    (b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1], "data": ["x"]}]}', None, "shape[0] is -1"),
    (b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [5]}]}', None, "takes strings"),
    (b'{"id": 5, "inputs": []}', None, "id\\\" must be a string"),
    (b'{"inputs": [{"name": "T", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "outputs": "L"}', None,
     "must be a list of"),
    (b'{"inputs": [{"name": "T", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4}}]}AB',
     "101", "runs past the end of the body"),
    (b'{"inputs": [{"name": "T", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}ABCDEFGH',
     "100", "add up to 4"),
    (b'{"inputs": []}', "abc", "must be an integer"),
    (b'{"inputs": []}', "999", "outside the body"),
])
def test_bad_requests_say_what_is_wrong(body, header_length, message):
    with pytest.raises(BadRequest) as e:
        parse_request(body, header_length)
    assert message.replace("\\", "") in str(e.value)


def test_compressed_bodies():
    raw = b'{"inputs": []}'
    assert decode_body(gzip.compress(raw), "gzip") == raw
    with pytest.raises(BadRequest, match="not valid gzip"):
        decode_body(b"plain", "gzip")
    with pytest.raises(BadRequest, match="unsupported Content-Encoding 'br'"):
        decode_body(raw, "br")
