"""The protocol-neutral request checks: each rule refuses what it should, with a message naming the field."""

from __future__ import annotations

import struct

import pytest

from serving.router.errors import BadRequest
from serving.router.tensor_checks import TensorIn, check_json_data, check_request, count_binary

META = {"name": "sentiment", "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "LABEL", "datatype": "BYTES", "shape": [-1, 1]}]}


def text(shape=(2, 1), count=2, name="TEXT", datatype="BYTES") -> TensorIn:
    return TensorIn(name, datatype, shape, count)


def test_a_valid_request_passes_with_and_without_metadata():
    check_request([text()], ["LABEL"], {"user_id": "u1", "n": 3, "b": True}, META)
    check_request([text(shape=(0, 1), count=0)], [], {}, META)
    check_request([text(name="ANYTHING")], ["WHATEVER"], {}, None)


@pytest.mark.parametrize("inputs, outputs, parameters, message", [
    ([], [], {}, "missing inputs"),
    ([text(), text()], [], {}, "appear more than once"),
    ([text(name="OTHER")], [], {}, "missing input(s) ['TEXT']; the model expects ['TEXT'], got ['OTHER']"),
    ([text(), text(name="OTHER")], [], {}, "unknown input 'OTHER'; the model takes ['TEXT']"),
    ([text(datatype="FP32")], [], {}, "datatype FP32 does not match the model's BYTES"),
    ([text(datatype="STRING")], [], {}, "unknown datatype 'STRING'"),
    ([text(shape=(2, -1))], [], {}, "shape[1] is -1; expected a non-negative integer"),
    ([text(shape=(2, 1), count=3)], [], {}, "holds 2 elements but the request carries 3"),
    ([text(shape=(2,), count=2)], [], {}, "does not match the model's [-1, 1]"),
    ([text(shape=(1, 2), count=2)], [], {}, "does not match the model's [-1, 1]"),
    ([text(shape=(1 << 20, 1 << 20), count=0)], [], {}, "at most"),
    ([text()], ["LABEL", "LABEL"], {}, "more than once"),
    ([text()], ["LOGITS"], {}, "unknown requested output(s) ['LOGITS']"),
    ([text()], [], {"user_id": None}, "parameters['user_id'] is null"),
    ([text()], [], {"x": [1]}, "parameters['x'] is a JSON array"),
    ([text()], [], {"x": 0.5}, "parameters['x'] is float 0.5; a parameter is a string, integer or boolean"),
    ([text()], [], [1, 2], "\"parameters\" must be a JSON object"),
])
def test_invalid_requests_name_the_field(inputs, outputs, parameters, message):
    with pytest.raises(BadRequest) as e:
        check_request(inputs, outputs, parameters, META)
    assert message in str(e.value)


@pytest.mark.parametrize("datatype, shape, data, message", [
    ("BYTES", (1, 1), None, "must be a JSON array, got null"),
    ("BYTES", (2, 1), ["ok", 3], "data[1] is int 3; a BYTES tensor takes strings"),
    ("BYTES", (1, 1), [None], "data[0] is null"),
    ("BYTES", (2, 1), [["a"], ["b", "c"]], "level 1 has 2 elements, expected 1"),
    ("BYTES", (2, 1), [["a"], "b"], "level 1 has str"),
    ("INT32", (2,), [1, 1.5], "a INT32 tensor takes integers"),
    ("INT8", (1,), [200], "in [-128, 127]"),
    ("INT64", (1,), [True], "bool True"),
    ("FP32", (1,), ["1.0"], "a FP32 tensor takes numbers"),
    ("BOOL", (1,), [1], "a BOOL tensor takes true/false"),
])
def test_json_element_types(datatype, shape, data, message):
    with pytest.raises(BadRequest) as e:
        check_json_data("X", datatype, shape, data)
    assert message in str(e.value)


def test_json_data_flat_or_nested_counts_elements():
    assert check_json_data("X", "BYTES", (2, 1), ["a", "b"]) == 2
    assert check_json_data("X", "BYTES", (2, 1), [["a"], ["b"]]) == 2
    assert check_json_data("X", "FP32", (2, 2), [[1, 2.5], [3, 4]]) == 4
    assert check_json_data("X", "BOOL", (0,), []) == 0


def bytes_tensor(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def test_binary_counts_and_bad_lengths():
    assert count_binary("X", "BYTES", bytes_tensor(b"a fine film", b"")) == 2
    assert count_binary("X", "FP32", b"\0" * 16) == 4
    with pytest.raises(BadRequest, match="not a whole number of FP32 elements"):
        count_binary("X", "FP32", b"\0" * 6)
    with pytest.raises(BadRequest, match="ends inside the length prefix of element 1"):
        count_binary("X", "BYTES", bytes_tensor(b"ok") + b"\1\0")
    with pytest.raises(BadRequest, match="element 0 declares 100 bytes but only 3 remain"):
        count_binary("X", "BYTES", struct.pack("<I", 100) + b"abc")
    with pytest.raises(BadRequest, match="unknown datatype 'F32'"):
        count_binary("X", "F32", b"")
