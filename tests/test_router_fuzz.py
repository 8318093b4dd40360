"""Property-based tests of the front door: generated v2 bodies, valid and broken, JSON and binary.

* In-process: ``parse_request`` + ``validate`` accept every valid body (counting its elements right) and
  refuse everything else with ``BadRequest`` only -- never another exception, whatever the bytes.
* End to end (real tritonserver on the tiny model, the real router as a subprocess): every answer is a
  200 or a 4xx with a JSON ``{"error": ...}``, never a 5xx while Triton is healthy; afterwards the router
  is still up, counted no server error, and the arms still serve. The python-backend model is fuzzed
  straight on Triton with well-formed requests carrying any text or bytes: 200 or 400, never 500.
"""

from __future__ import annotations

import json
import string
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.contract import CONTRACT
from serving.router.errors import BadRequest
from serving.router.process import RouterProcess
from serving.router.protocol import parse_request, validate
from tests.conftest import REPOSITORY_MAX_BATCH

MODEL = CONTRACT.default_model_name
EXPERIMENT = "fuzz-ab"
META = {"name": MODEL, "inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [{"name": CONTRACT.output_probabilities, "datatype": "FP32", "shape": [-1, 2]},
                    {"name": CONTRACT.output_label, "datatype": "BYTES", "shape": [-1, 1]}]}
MAX_BATCH = REPOSITORY_MAX_BATCH  # the conftest repository's, which the triton fixture serves

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
TEXTS = st.text(min_size=1, max_size=40).filter(str.strip)  # what the model takes: non-blank text
PARAMETERS = st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8).map("p_".__add__),
                             st.text(max_size=10) | st.integers(-(2**31), 2**31) | st.booleans(), max_size=3)


def bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def encode(header: dict, binary: bytes | None) -> tuple[bytes, dict[str, str]]:
    """A request body and its headers: plain JSON, or a JSON header followed by binary tensors."""
    head = json.dumps(header).encode()
    if binary is None:
        return head, {"Content-Type": "application/json"}
    return head + binary, {"Inference-Header-Content-Length": str(len(head)),
                           "Content-Type": "application/octet-stream"}


@st.composite
def valid_requests(draw, texts=TEXTS) -> tuple[dict, list[bytes] | None]:
    """A valid request as (JSON header, binary elements or None): 1..8 texts, JSON or binary."""
    n = draw(st.integers(1, MAX_BATCH))
    values = draw(st.lists(texts, min_size=n, max_size=n))
    inp: dict = {"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [n, 1]}
    header: dict = {"inputs": [inp]}
    binary = None
    if any(isinstance(v, bytes) for v in values) or draw(st.booleans()):  # raw bytes travel only in binary
        binary = [v.encode() if isinstance(v, str) else v for v in values]
        inp["parameters"] = {"binary_data_size": len(bytes_tensor(binary))}
    else:
        inp["data"] = [[v] for v in values] if draw(st.booleans()) else list(values)
    if params := draw(PARAMETERS):
        header["parameters"] = params
    if outputs := draw(st.lists(st.sampled_from([CONTRACT.output_label, CONTRACT.output_probabilities]),
                                unique=True, max_size=2)):
        header["outputs"] = [{"name": o, "parameters": {"binary_data": draw(st.booleans())}} for o in outputs]
    if draw(st.booleans()):
        header["id"] = draw(st.text(max_size=12))
    return header, binary


def valid_bodies() -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    return valid_requests().map(lambda r: encode(r[0], None if r[1] is None else bytes_tensor(r[1])))


# where a mutation strikes: a function from the header to (container, key) to replace or delete
SPOTS = {
    "inputs": lambda h: (h, "inputs"),
    "input": lambda h: (h["inputs"], 0),
    "name": lambda h: (h["inputs"][0], "name"),
    "datatype": lambda h: (h["inputs"][0], "datatype"),
    "shape": lambda h: (h["inputs"][0], "shape"),
    "shape[0]": lambda h: (h["inputs"][0]["shape"], 0),
    "shape[1]": lambda h: (h["inputs"][0]["shape"], 1),
    "data": lambda h: (h["inputs"][0], "data"),
    "input parameters": lambda h: (h["inputs"][0], "parameters"),
    "parameters": lambda h: (h, "parameters"),
    "outputs": lambda h: (h, "outputs"),
    "id": lambda h: (h, "id"),
}


@st.composite
def broken_bodies(draw) -> tuple[bytes, dict[str, str]]:
    """A valid request with one part replaced by any JSON value (or deleted), or its bytes damaged."""
    header, values = draw(valid_requests())
    binary = None if values is None else bytes_tensor(values)
    spot = draw(st.sampled_from(sorted(SPOTS)))
    container, key = SPOTS[spot](header)
    if draw(st.booleans()):
        if isinstance(container, dict):
            container.pop(key, None)
        elif len(container) > key:
            del container[key]
    elif isinstance(container, dict) or len(container) > key:
        container[key] = draw(JSON_VALUES)
    body, headers = encode(header, binary)
    damage = draw(st.sampled_from(["none", "truncate", "append", "header length"]))
    if damage == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif damage == "append":
        body += draw(st.binary(min_size=1, max_size=16))
    elif damage == "header length":
        headers["Inference-Header-Content-Length"] = str(draw(st.integers(-2, len(body) + 2)))
    return body, headers


def raw_bodies() -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
    """Bytes that are rarely JSON at all, and JSON that is rarely a request."""
    junk = st.binary(max_size=64).map(lambda b: (b, {}))
    any_json = JSON_VALUES.map(lambda v: (json.dumps(v).encode(), {}))
    deep = st.integers(1000, 100_000).map(lambda n: (b"[" * n, {}))
    return junk | any_json | deep


ANY_BODY = valid_bodies() | broken_bodies() | raw_bodies()


# -- in-process: the parser -------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(valid_requests())
def test_valid_requests_parse_and_validate(request_):
    header, values = request_
    body, headers = encode(header, None if values is None else bytes_tensor(values))
    req = parse_request(body, headers.get("Inference-Header-Content-Length"))
    validate(req, META)
    assert req.body == body
    assert [t.count for t in req.tensors] == [header["inputs"][0]["shape"][0]]


@settings(max_examples=500, deadline=None)
@given(ANY_BODY)
def test_any_body_is_accepted_or_refused_with_bad_request(body_headers):
    body, headers = body_headers
    try:
        validate(parse_request(body, headers.get("Inference-Header-Content-Length")), META)
    except BadRequest as e:
        assert str(e)


# -- end to end: the real router and the real python-backend model --------------------------------------------

@pytest.fixture(scope="module")
def router(triton, tmp_path_factory) -> Iterator[RouterProcess]:
    folder: Path = tmp_path_factory.mktemp("fuzz-router")
    (folder / "experiment.yaml").write_text(yaml.safe_dump({
        "name": EXPERIMENT, "upstream": triton.http_url, "timeout_s": 5.0, "fallback": "control",
        "arms": [{"name": "control", "model": MODEL, "version": "1", "weight": 50},
                 {"name": "treatment", "model": MODEL, "version": "2", "weight": 50}]}))
    with RouterProcess(folder / "experiment.yaml", log_file=folder / "router.log",
                       extra_args=["--log-level", "warning"]) as r:
        yield r


def assert_client_or_ok(response: httpx.Response, body: bytes) -> None:
    status = response.status_code
    assert status == 200 or 400 <= status < 500, (status, response.text[:300], body[:300])
    if status != 200:
        assert isinstance(response.json()["error"], str), response.text[:300]


def server_errors(router: RouterProcess) -> float:
    text = httpx.get(f"{router.url}/metrics", timeout=10, trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("router_errors_total{") and 'kind="server"' in line)


@pytest.mark.e2e
def test_router_answers_every_body_with_200_or_a_4xx(router):
    statuses: set[int] = set()
    with httpx.Client(base_url=router.url, timeout=30, trust_env=False) as client:
        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(ANY_BODY)
        def check(body_headers):
            body, headers = body_headers
            response = client.post(f"/v2/models/{EXPERIMENT}/infer", content=body, headers=headers)
            assert_client_or_ok(response, body)
            statuses.add(response.status_code)

        check()
        assert 200 in statuses and 400 in statuses, statuses
        assert client.get("/v2/health/ready").status_code == 200
        variants = {client.post(f"/v2/models/{EXPERIMENT}/infer", json={"inputs": [
            {"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [1, 1], "data": ["a fine film"]}]}
        ).headers["X-Variant"] for _ in range(40)}
        assert variants == {"control", "treatment"}  # no breaker opened: both arms still serve
    assert server_errors(router) == 0


@pytest.mark.e2e
def test_python_backend_model_answers_any_text_with_200_or_400(triton):
    """Straight to Triton: well-formed requests whose texts are anything (blank, not UTF-8, control chars)."""
    any_text = st.text(max_size=30) | st.binary(max_size=30)
    with httpx.Client(base_url=triton.http_url, timeout=30, trust_env=False) as client:
        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(valid_requests(texts=any_text), st.sampled_from(["1", "2"]))
        def check(request_, version):
            header, values = request_
            body, headers = encode(header, None if values is None else bytes_tensor(values))
            response = client.post(f"/v2/models/{MODEL}/versions/{version}/infer", content=body, headers=headers)
            assert response.status_code in (200, 400), (response.status_code, response.text[:300], body[:300])
            if response.status_code == 400:
                assert response.json()["error"]

        check()
