"""The rollout and fault drills, run for real on the tiny exported model (tritonserver, router, Locust)."""

from __future__ import annotations

import pytest

from workflows.drills import DrillConfig, fault_drill, ramp_drill


@pytest.mark.e2e
def test_ramp_drill_has_no_failed_requests(tiny_onnx_dir, tmp_path):
    # a generous router timeout: on a busy shared machine loading a version can stall Triton for seconds, and a
    # timeout then is the machine's, not the rollout's; what this test checks is that no step drops a request
    summary = ramp_drill(DrillConfig(run=tiny_onnx_dir.parent, out_dir=tmp_path, rate=15, step_s=10, timeout_s=15.0))
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["v1 only (canary 0 %)", "publish + load the new version", "canary 10 %",
                           "canary 50 %", "canary 100 %", "unload v1"]
    assert summary["failed_requests"] == 0, summary["steps"]
    assert all(s["requests"] > 50 for s in summary["steps"]), "the load ran through every step"
    assert steps["publish + load the new version"]["notes"]["ready_versions"] == [1, 2]
    assert steps["unload v1"]["notes"]["ready_versions"] == [2]
    assert all(s["p99_ms"] is not None and s["p99_ms"] > 0 for s in summary["steps"])
    assert (tmp_path / summary["folder"].split("/")[-1] / "drill.md").is_file()


@pytest.mark.e2e
def test_fault_drill_fast_503s_recovery_and_malformed_corpus(tiny_onnx_dir, tmp_path):
    summary = fault_drill(DrillConfig(run=tiny_onnx_dir.parent, out_dir=tmp_path, rate=15, step_s=10, outage_s=4))
    # events, not timings: a 503 came after the kill, every outage request got an answer (none hung:
    # the drill's own check), only the expected statuses, and the router served again after the restart
    assert summary["first_503_after_kill_s"] is not None and 503 in summary["outage_statuses"]
    assert summary["no_request_hung"], summary["slowest_outage_request_s"]
    assert set(summary["outage_statuses"]) <= {503, 504, 200}
    assert summary["serving_again_after_restart_s"] is not None
    failures = summary["failed_requests_by_step"]
    assert failures["steady"] == 0 and failures["recovered"] == 0
    assert failures["tritonserver killed, then restarted"] > 0, "the outage must show in the load test"
    assert summary["malformed_all_4xx"], summary["malformed"]
    assert summary["malformed"]["oversize body"]["statuses"][0] == 413
    assert summary["malformed"]["unknown model"]["statuses"][0] == 404
    assert summary["good_traffic_failures_during_malformed"] == 0
    metrics = summary["metrics"]
    assert metrics["errors_match"], metrics  # the router counted exactly the malformed corpus: 25x 400, 5x 413, 5x 404
    assert metrics["malformed_sent_by_code"] == {400: 25, 413: 5, 404: 5}
    # every answer the router counted reached a client; Locust may drop the record of a request still in
    # flight when it stops, so the router can count a few more than Locust received, never fewer
    assert 0 <= metrics["answered_minus_received"] <= 3, metrics
