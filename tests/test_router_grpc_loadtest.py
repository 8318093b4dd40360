"""``python -m loadtests run --protocol grpc``: Locust's GrpcUser through the router's gRPC endpoint, with
feedback to the router's HTTP endpoint carrying the request id each gRPC answer returned."""

from __future__ import annotations

import csv

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.config import LoadTestConfig, LoadTestError
from loadtests.run import locust_commands, run_loadtest
from tests.test_router_grpc import EXPERIMENT, router  # noqa: F401


def test_protocol_grpc_picks_the_grpc_user_and_its_address(tmp_path):
    cfg = LoadTestConfig(protocol="grpc", host="http://127.0.0.1:9", grpc_host="127.0.0.1:7")
    (_, argv), = locust_commands(cfg, tmp_path)
    assert argv[-1] == "GrpcUser"
    assert argv[argv.index("--grpc-host") + 1] == "127.0.0.1:7" and argv[argv.index("--host") + 1] == "http://127.0.0.1:9"
    assert LoadTestConfig(protocol="grpc", target="triton").grpc_address == "127.0.0.1:8001"
    assert locust_commands(LoadTestConfig(), tmp_path)[0][1][-1] == "ClosedLoopUser"


@pytest.mark.parametrize("settings, message", [
    ({"protocol": "grcp"}, "unknown protocol 'grcp'; expected one of: http, grpc"),
    ({"protocol": "grpc", "arrival_rate": 5.0}, "protocol grpc runs closed loop"),
    ({"grpc_host": "grpc://127.0.0.1:8081"}, "grpc_host must be HOST:PORT"),
])
def test_bad_grpc_settings_are_named(settings, message):
    with pytest.raises(LoadTestError, match=message):
        LoadTestConfig(**settings)


def feedback_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "router_feedback_total")


@pytest.mark.e2e
def test_grpc_load_test_sends_feedback_through_the_router(router, tiny_heldout, tmp_path):  # noqa: F811
    texts = tiny_heldout
    before = feedback_count(router.url)
    result = run_loadtest(LoadTestConfig(
        protocol="grpc", host=router.url, grpc_host=router.grpc_address, experiment=EXPERIMENT, texts=str(texts),
        users=2, run_time="4s", feedback_fraction=1.0, triton_metrics_url="none", out_dir=str(tmp_path)))
    with open(result.folder / "locust_stats.csv", newline="") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f) if r["Name"] != "Aggregated"}
    infer = {name: int(r["Request Count"]) for (kind, name), r in rows.items() if kind == "infer"}
    feedback = rows[("feedback", "feedback")]
    assert infer and set(infer) <= {"control", "treatment"}, rows
    assert all(r["Failure Count"] == "0" for r in rows.values()), rows  # every feedback found its request id
    assert int(feedback["Request Count"]) > 0
    assert feedback_count(router.url) - before == int(feedback["Request Count"])
