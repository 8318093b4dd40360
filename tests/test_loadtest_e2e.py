"""Locust, headless for a few seconds, against the real stack: tritonserver + the A/B router on a published tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import psutil
import pytest

from export.config import ExportConfig
from export.contract import CONTRACT
from export.publish import publish
from loadtests.config import LoadTestConfig
from loadtests.run import run_loadtest
from serving.router.process import RouterProcess
from serving.triton import TritonServer

pytestmark = pytest.mark.e2e

MODEL = CONTRACT.default_model_name


def stats(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "locust_stats.csv", newline="") as f:
        return {r["Name"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def stack(tiny_onnx_dir, tiny_heldout, tmp_path_factory):
    """Triton serving fp32 (v1) and int8 (v2) of the tiny export, and the router splitting 50/50 between them."""
    tmp = tmp_path_factory.mktemp("loadtest-stack")
    cfg = ExportConfig(repository=tmp / "repository", model_name=MODEL, name="tiny")
    publish(tiny_onnx_dir, "fp32", cfg)
    publish(tiny_onnx_dir, "int8", cfg)
    experiment = tmp / "ab.yaml"  # JSON is YAML
    experiment.write_text(json.dumps({
        "name": "sentiment-ab", "sticky": {"header": "X-User-Id"}, "fallback": "control",
        "arms": [{"name": "control", "model": MODEL, "version": "1", "weight": 50},
                 {"name": "treatment", "model": MODEL, "version": "2", "weight": 50}]}))
    texts = tiny_heldout
    with TritonServer(cfg.repository, models=[MODEL]) as triton, \
            RouterProcess(experiment, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url) as router:
        yield {"triton": triton, "router": router, "texts": str(texts), "reports": tmp / "reports"}


def assert_no_locust_left() -> None:
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "locust" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                left.append(child.pid)
        except psutil.Error:  # exited while we looked
            continue
    assert not left, f"locust processes left running: {left}"


def test_closed_loop_through_the_router(stack):
    cfg = LoadTestConfig(target="router", host=stack["router"].url, texts=stack["texts"], users=8, run_time="5s",
                         feedback_fraction=0.5, triton_metrics_url=stack["triton"].metrics_url,
                         out_dir=str(stack["reports"]))
    result = run_loadtest(cfg)
    rows = stats(result.folder)
    variants = {name for name, r in rows.items() if r["Type"] == "infer"}
    assert variants == {"control", "treatment"}, rows.keys()
    assert "variant switch" not in rows  # every user kept its arm: the router's assignment is sticky
    for name, r in rows.items():
        assert int(r["Request Count"]) > 0 and r["Failure Count"] == "0", (name, r)
    assert int(rows["feedback"]["Request Count"]) > 0
    # Triton saw, per version, exactly the requests Locust counted per arm
    triton = {m["version"]: m["requests"] for m in json.loads((result.folder / "triton_metrics.json").read_text())["models"]}
    assert triton == {"1": int(rows["control"]["Request Count"]), "2": int(rows["treatment"]["Request Count"])}
    # the router's statistical report agrees on the counts and has the feedback's accuracy
    arms = json.loads((result.folder / "router_report.json").read_text())["arms"]
    assert {arm: arms[arm]["requests"] for arm in ("control", "treatment")} == {
        arm: int(rows[arm]["Request Count"]) for arm in ("control", "treatment")}
    assert sum(arms[arm]["accuracy"]["n"] for arm in ("control", "treatment")) == int(rows["feedback"]["Request Count"])
    report = result.report.read_text()
    assert "| control |" in report and "### Experiment `sentiment-ab`" in report
    assert (result.folder / "latency_cdf.png").stat().st_size > 10_000
    assert result.exit_code == 0
    assert_no_locust_left()


def test_open_loop_distributed_against_triton(stack):
    cfg = LoadTestConfig(target="triton", host=stack["triton"].http_url, versions="1,2", texts=stack["texts"],
                         users=2, arrival_rate=40, user_population=50, run_time="4s", workers=2,
                         triton_metrics_url=stack["triton"].metrics_url, out_dir=str(stack["reports"]))
    result = run_loadtest(cfg)
    rows = stats(result.folder)
    assert {n for n, r in rows.items() if r["Type"] == "infer"} == {f"{MODEL} v1", f"{MODEL} v2"}
    assert all(r["Failure Count"] == "0" for r in rows.values()), rows
    total = int(rows["Aggregated"]["Request Count"])
    assert 0 < total <= 320, total  # at most ~40/s Poisson for ~4 s (a busy machine sends fewer): not a closed loop
    cpu_roles = {r["role"] for r in csv.DictReader(open(result.folder / "client_cpu.csv"))}
    assert {"master", "worker-1", "worker-2", "machine"} <= cpu_roles
    assert_no_locust_left()


def test_steps_shape_raises_the_users(stack):
    cfg = LoadTestConfig(target="triton", host=stack["triton"].http_url, texts=stack["texts"], users=4, steps=2,
                         shape="steps", think_time=0.05, run_time="4s", triton_metrics_url="none",
                         out_dir=str(stack["reports"]))
    result = run_loadtest(cfg)
    history = list(csv.DictReader(open(result.folder / "locust_stats_history.csv")))
    users = [int(r["User Count"]) for r in history if r["Name"] == "Aggregated"]
    assert 2 in users and max(users) == 4, users  # 2 users for the first half, 4 for the second
    assert users.index(2) < users.index(4)
    assert all(r["Failure Count"] == "0" for r in stats(result.folder).values())
    assert_no_locust_left()
