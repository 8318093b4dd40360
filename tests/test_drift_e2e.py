"""The router's drift and confidence recording, end to end: the real tritonserver (tiny model, versions published
with their drift references), the real router with ``--model-repository`` and its default SQLite store, and
requests over HTTP (binary and JSON tensors) and gRPC; after the router stops, ``python -m serving report
--store`` shows the drift its monitors computed. Every process started here is stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from experiments.drift.guardrail import MIN_SAMPLES
from export.contract import CONTRACT
from serving.client import text_input
from tests.test_router_e2e import ROOT, make_router, metric, spec
from tunestack.procs import wait_for

pytestmark = pytest.mark.e2e

REVIEWS = ["a fine film", "A dull, overlong mess.", "not bad at all", "the best thing I saw this year",
           "two hours I will never get back"]


def test_every_answer_feeds_the_confidence_and_the_drift_monitor_over_http_and_grpc(triton, repository,
                                                                                     tmp_path):
    router = make_router(tmp_path, spec(triton.http_url, weights=(50, 50)), "--triton-grpc-url", triton.grpc_url,
                         "--model-repository", str(repository), "--drift-sample-rate", "1")
    served: Counter[str] = Counter()
    top_sum: Counter[str] = Counter()
    with router:
        http = httpclient.InferenceServerClient(router.address)
        grpc = grpcclient.InferenceServerClient(router.grpc_address)
        try:
            for i in range(150):  # 4 texts a request: 600 predictions, ~300 per arm (the monitor needs 200)
                text = [REVIEWS[(i + k) % len(REVIEWS)] for k in range(4)]
                headers = {"X-User-Id": f"user-{i}"}
                if i % 3 == 0:
                    r = grpc.infer("sentiment-ab", [text_input(grpcclient, text)], headers={"x-user-id": f"user-{i}"})
                    arm = r.get_response().parameters["variant"].string_param
                elif i % 3 == 1:
                    r = http.infer("sentiment-ab", [text_input(httpclient, text)], headers=headers)
                    arm = r.get_response()["parameters"]["variant"]
                else:  # JSON tensors, no binary extension
                    body = {"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [4, 1],
                                        "data": [[t] for t in text]}]}
                    answer = httpx.post(f"{router.url}/v2/models/sentiment-ab/infer", json=body, headers=headers,
                                        timeout=10, trust_env=False).json()
                    arm = answer["parameters"]["variant"]
                    probs = next(o["data"] for o in answer["outputs"] if o["name"] == CONTRACT.output_probabilities)
                    top_sum[arm] += sum(max(probs[j:j + 2]) for j in range(0, len(probs), 2))
                    served[arm] += 4
                    continue
                top_sum[arm] += float(r.as_numpy(CONTRACT.output_probabilities).max(axis=1).sum())
                served[arm] += 4
        finally:
            http.close()
            grpc.close()

        def scrape() -> str:
            return httpx.get(router.url + "/metrics", timeout=10, trust_env=False).text

        wait_for(lambda: metric(scrape(), "router_drift_samples_total") == 600, 60, "the drift worker's samples")
        text = scrape()
        for arm, n in served.items():
            assert metric(text, "router_drift_samples_total", arm=arm) == n
            assert metric(text, "router_prediction_confidence_count", arm=arm) == n
            assert metric(text, "router_prediction_confidence_sum", arm=arm) == pytest.approx(top_sum[arm], rel=1e-5)

        def report() -> dict:
            return httpx.get(f"{router.url}/v2/experiments/sentiment-ab/report", timeout=30, trust_env=False).json()

        # the report comes from the store: wait for its writer to flush every answer and monitored text
        wait_for(lambda: report()["arms"]["control"]["requests"] + report()["arms"]["treatment"]["requests"] == 150,
                 60, "the store's answers")
        wait_for(lambda: {a: f["text_length"]["n"] for a, f in report().get("drift", {}).items()} == dict(served),
                 60, "the store's monitored texts")
        r = report()
        gauges = {(arm, feature): metric(text, "drift_psi", arm=arm, feature=feature)
                  for arm, feats in r["drift"].items() for feature in feats}
    # the router has stopped: the report from its store alone shows the drift its monitors computed
    cli = subprocess.run([sys.executable, "-m", "serving", "report", "--store",
                          f"sqlite:///{tmp_path / 'experiment.store.sqlite'}", "--format", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["drift"] == r["drift"]
    assert json.loads(cli.stdout)["judge"] == r["judge"], "the router and the store alone give the same verdicts"
    assert {k: r["drift"][k[0]][k[1]]["psi"] for k in gauges} == pytest.approx(gauges, rel=1e-12)
    conf = r["judge"]["treatments"]["treatment"]["metrics"]["confidence_mean"]
    assert (conf["n_control"], conf["n_treatment"]) == (served["control"], served["treatment"])
    assert set(r["drift"]) == {a for a, n in served.items() if n >= MIN_SAMPLES} == {"control", "treatment"}
    for arm, feats in r["drift"].items():
        assert feats["text_length"]["n"] == served[arm]
    guard = r["judge"]["treatments"]["treatment"]["metrics"]["drift"]  # 5 short texts: whether they drift is not the point here
    assert guard["verdict"] in ("equivalent within margin", "worse") and guard["n_treatment"] == served["treatment"]
