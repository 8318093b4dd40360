"""The router's drift and confidence recording, end to end: the real tritonserver (tiny model, versions published
with their drift references), the real router with ``--model-repository`` and its default SQLite store, and
requests over HTTP (binary and JSON tensors) and gRPC. Every process started here is stopped."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.contract import CONTRACT
from serving.client import text_input
from tests.test_router_e2e import make_router, metric, repository, spec, triton  # noqa: F401
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
            for i in range(150):
                text = [REVIEWS[i % len(REVIEWS)]]
                headers = {"X-User-Id": f"user-{i}"}
                if i % 3 == 0:
                    r = grpc.infer("sentiment-ab", [text_input(grpcclient, text)], headers={"x-user-id": f"user-{i}"})
                    arm = r.get_response().parameters["variant"].string_param
                elif i % 3 == 1:
                    r = http.infer("sentiment-ab", [text_input(httpclient, text)], headers=headers)
                    arm = r.get_response()["parameters"]["variant"]
                else:  # JSON tensors, no binary extension
                    body = {"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [1, 1],
                                        "data": [text]}]}
                    answer = httpx.post(f"{router.url}/v2/models/sentiment-ab/infer", json=body, headers=headers,
                                        timeout=10, trust_env=False).json()
                    arm = answer["parameters"]["variant"]
                    probs = next(o["data"] for o in answer["outputs"] if o["name"] == CONTRACT.output_probabilities)
                    top_sum[arm] += max(probs)
                    served[arm] += 1
                    continue
                top_sum[arm] += float(r.as_numpy(CONTRACT.output_probabilities).max())
                served[arm] += 1
        finally:
            http.close()
            grpc.close()

        def scrape() -> str:
            return httpx.get(router.url + "/metrics", timeout=10, trust_env=False).text

        wait_for(lambda: metric(scrape(), "router_drift_samples_total") == 150, 60, "the drift worker's samples")
        text = scrape()
        for arm, n in served.items():
            assert metric(text, "router_drift_samples_total", arm=arm) == n
            assert metric(text, "router_prediction_confidence_count", arm=arm) == n
            assert metric(text, "router_prediction_confidence_sum", arm=arm) == pytest.approx(top_sum[arm], rel=1e-5)

        def report() -> dict:
            return httpx.get(f"{router.url}/v2/experiments/sentiment-ab/report", timeout=30, trust_env=False).json()

        # the report comes from the store: wait for its writer to flush every answer
        wait_for(lambda: report()["arms"]["control"]["requests"] + report()["arms"]["treatment"]["requests"] == 150,
                 60, "the store's answers")
        r = report()
    conf = r["judge"]["treatment"]["metrics"]["confidence_mean"]
    assert (conf["n_control"], conf["n_treatment"]) == (served["control"], served["treatment"])
    assert set(r["drift"]) == {a for a, n in served.items() if n >= 50}  # the monitor's minimum sample
    for arm, feats in r["drift"].items():
        assert feats["text_length"]["n"] == served[arm]
    assert r["judge"]["treatment"]["metrics"]["drift"]["verdict"] == "not enough evidence yet"  # < 200 texts per arm
