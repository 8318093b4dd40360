"""The bench's peer servers (FastAPI + ORT, LitServe + ORT) on the tiny model: start, answer like Triton, stop;
and the in-process limit they are compared with."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest

from export.config import ExportConfig
from export.contract import CONTRACT
from export.publish import publish
from export.triton_model.model import TextClassifier
from loadtests.peers import PEERS, peer_service
from loadtests.protocol import check_prediction, infer_body

TEXTS = ["a fine film with a moving story", "a dull , overlong mess that never ends", "not bad"]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(PEERS))
def test_peer_starts_answers_like_the_published_model_and_stops(name, tiny_onnx_dir, tmp_path):
    version_dir = publish(tiny_onnx_dir, "int8", ExportConfig(repository=tmp_path / "repository"))
    classifier = TextClassifier(version_dir)  # one text at a time: dynamic int8 is not batch-invariant
    expected = np.concatenate([classifier.predict([text])[0] for text in TEXTS])
    labels = frozenset(json.loads((version_dir / CONTRACT.label_map_file).read_text())["labels"])
    service = peer_service(name, version_dir, threads=1, log_path=tmp_path / f"{name}.log")
    with service:
        pid = service.child.pid
        url = f"{service.url}/v2/models/{name}/infer"
        rows = []
        for text in TEXTS:  # one text per request: LitServe may batch them, the answers must not change
            status, answer = post(url, infer_body([text]))
            assert status == 200, answer
            assert check_prediction(answer, 1, labels) is None
            assert answer["model_name"] == name and answer["model_version"] == "1"
            rows.append(answer["outputs"][0]["data"])
        np.testing.assert_allclose(np.array(rows), expected, atol=1e-5)
        status, _ = post(url, {"inputs": [{"name": "WRONG", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
        assert status in (400, 422)
        tree = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    assert service.child is None
    _, alive = psutil.wait_procs([psutil.Process(p) for p in tree if psutil.pid_exists(p)], timeout=30)
    assert not alive, f"{name} left processes behind: {alive}"


def test_inprocess_limit_alternates_its_rows(tiny_onnx_dir, tmp_path):
    from loadtests.peers.inprocess import inprocess_limit

    version_dir = publish(tiny_onnx_dir, "int8", ExportConfig(repository=tmp_path / "repository"))
    limit = inprocess_limit(version_dir, TEXTS * 12, threads=1, seconds=0.6, phases=2)
    assert [(r["code"], r["batch_size"]) for r in limit["rows"]] == [
        ("tokenizers + ORT", 1), ("tokenizers + ORT", 16), ("model.py TextClassifier", 16)]
    for row in limit["rows"]:
        assert row["n"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["items_per_s"] > 0, row
    assert limit["best_items_per_s"] == max(r["items_per_s"] for r in limit["rows"])
