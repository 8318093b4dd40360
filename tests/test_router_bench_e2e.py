"""``serving.router_bench`` end to end on the tiny model: every path measured, the floor proxies included, and
the floor proxies (``serving.proxy_floor``) pass Triton's answers through unchanged over HTTP and gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.config import ExportConfig
from export.contract import CONTRACT
from export.publish import publish
from serving.client import text_input
from serving.router_bench import start_floor
from serving.triton import TritonServer
from tunestack.names import HOST

pytestmark = pytest.mark.e2e

MODEL = "sentiment"
TEXTS = ["a fine film", "A dull, overlong mess."]


@pytest.fixture(scope="module")
def repository(tiny_onnx_dir, tmp_path_factory) -> Path:
    cfg = ExportConfig(repository=tmp_path_factory.mktemp("bench") / "model_repository", model_name=MODEL,
                       max_batch_size=8, max_queue_delay_us=0)
    assert publish(tiny_onnx_dir, "fp32", cfg).name == "1"
    return cfg.repository


def probabilities(module, address: str) -> np.ndarray:
    client = module.InferenceServerClient(address)
    try:
        result = client.infer(MODEL, [text_input(module, TEXTS)], model_version="1")
        return result.as_numpy(CONTRACT.output_probabilities)
    finally:
        client.close()


def test_floor_proxies_pass_answers_through(repository, tmp_path):
    with TritonServer(repository, models=[MODEL], startup_timeout=90) as triton:
        floor, ports = start_floor(triton.http_url, triton.grpc_url, tmp_path / "floor.log")
        try:
            direct = probabilities(httpclient, triton.http_address)
            for name in ("raw", "asgi"):
                np.testing.assert_array_equal(probabilities(httpclient, f"{HOST}:{ports[name]}"), direct, err_msg=name)
            np.testing.assert_allclose(probabilities(grpcclient, f"{HOST}:{ports['grpc']}"),
                                       probabilities(grpcclient, triton.grpc_url), rtol=0, atol=0)
        finally:
            assert floor.stop() is not None
        assert not floor.is_running()


def test_router_bench_measures_every_path(repository, tmp_path):
    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "serving.router_bench", "--repository", str(repository), "--requests", "40",
            "--concurrency", "1,2", "--phases", "2", "--warmup", "4", "--floor", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    compared = {"router": "direct", "router grpc": "direct grpc", "floor raw": "direct", "floor asgi": "direct",
                "floor grpc": "direct grpc"}
    for row in rows:
        assert set(row["paths"]) == {"direct", "direct grpc", *compared}
        for name, path in row["paths"].items():
            assert path["n"] == 40 and 0 < path["p50_ms"] <= path["p99_ms"], (name, path)
        for name, baseline in compared.items():
            path = row["paths"][name]
            assert path["diff_p50_ms"]["vs"] == baseline
            assert path["diff_p50_ms"]["low"] <= path["diff_p50_ms"]["estimate"] <= path["diff_p50_ms"]["high"]
            assert path["cpu_us_per_request"] >= 0, name  # psutil counts CPU in 10 ms ticks: 40 requests may read 0
    assert "| floor raw |" in done.stdout and "| router grpc |" in done.stdout
    assert "| floor raw |" in (out / "bench.md").read_text()
    assert sorted(p.name for p in out.glob("*.png")) == ["latency_cdf_c1.png", "latency_cdf_c2.png"]
