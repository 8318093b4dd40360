"""The rollout drills end to end on the tiny model: tritonserver, the router with its SQLite store, Locust load
with feedback on every answer, and the rollout controller ramping through the store.

On a tiny random model "accuracy" means nothing, so the candidates are made controllable:
* good: the tiny int8 export behind its fp32 control (the same predictions up to quantization); the tiny
  model answers one label only, so the label mix has no verdict (the judge needs two labels) and is no
  guardrail here; and on the shared, busy 2-core test machine the latency tail is scheduling noise, so
  the p99 margin is wide (0.5: half the answers may cross the control's p95): this test checks the promotion
  mechanics, ``slow`` the latency guardrail;
* bad: the control's own export with its label names reversed (every prediction's name flipped), and
  held-out texts relabelled with the control's predictions, so the control is right on every answer and
  the candidate on none; the label mix is no guardrail here (flipping the names moves it too);
* slow: the same fp32 export published as a second Triton model whose dynamic batcher holds every request
  200 ms (``max_queue_delay_microseconds``), behind the int8 control, p99 margin 0.01: every one of its answers
  is slower than the control's tail threshold.
The judge's "p99" metric here is the share of answers slower than the control's 95th percentile over its
first 100 answers (``quantile: 0.95``, ``min_samples`` 100): the 99th over 500 answers takes more traffic than a
short test serves. Each judges users (Locust's 500 visitor ids), within each ramp step, and checks the split.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.page.html import ASSETS
from tunestack.layout import RunLayout
from workflows.drills.common import DrillConfig
from workflows.drills.progressive import ArmSource, flipped_export, rollout_drill_run

MIN_SAMPLES = {name: 100 for name in ("error_rate", "latency_mean", "latency_p99", "accuracy", "label_distribution",
                                      "confidence_mean")}


def section(steps: list[float], guardrails: list[str], margins: dict) -> dict:
    return {"steps": steps, "guardrails": guardrails, "min_step_requests": 40, "step_timeout_s": 45, "poll_s": 0.5,
            "judge": {"quantile": 0.95, "tune_n": 300, "min_samples": MIN_SAMPLES, "margins": margins}}


def drill_config(run, tmp_path) -> DrillConfig:
    """The load stops 5 s after the controller's decision: nothing after it is checked but failed requests."""
    return DrillConfig(run=run, out_dir=tmp_path, rate=40, after_decision_s=5.0)


@pytest.mark.e2e
def test_good_candidate_is_promoted_to_100_percent_with_no_failed_request(tiny_onnx_dir, tmp_path):
    arms = [ArmSource("fp32", tiny_onnx_dir, "fp32"), ArmSource("int8", tiny_onnx_dir, "int8")]
    margins = {"error_rate": 0.05, "latency_p99": 0.5}
    s = rollout_drill_run(drill_config(tiny_onnx_dir.parent, tmp_path), "good", arms,
                          section([25, 50, 100], ["error_rate", "latency_p99"], margins), 55)
    assert (s["decision"], s["step"], s["percent"]) == ("complete", 3, 100.0), s["reason"]
    assert s["failed_requests"] == 0 and s["failed_feedback"] == 0
    assert s["candidate_requests"] > 100 and s["candidate_users"] > 50
    assert len(s["revisions"]) == 4  # start, promote to 50, promote to 100, complete
    assert s["judge"]["sample_ratio"] == "no mismatch detected"


def relabelled_run(onnx_dir, dest):
    """A run folder whose held-out labels are the fp32 export's own predictions (its accuracy: ~1.0), plus one
    row per label name (Locust fails an answer whose label its texts never carry)."""
    from transformers import AutoTokenizer

    from export.parity import onnx_logits, onnx_session
    from export.publish import read_source

    src = read_source(onnx_dir, "fp32")
    rows = [json.loads(line) for line in RunLayout.of_folder(onnx_dir).heldout.read_text().splitlines()]
    logits = onnx_logits(onnx_session(src.onnx_file, 1), AutoTokenizer.from_pretrained(onnx_dir),
                         [r["text"] for r in rows], src.max_length, 32)
    relabelled = [{"text": r["text"], "label": src.labels[int(k)]} for r, k in zip(rows, np.argmax(logits, 1), strict=True)]
    # Locust accepts only the labels its texts carry: keep every label name in the file (one row each)
    relabelled += [{"text": f"{name} anchor", "label": name} for name in src.labels]
    layout = RunLayout(dest)
    shutil.copytree(onnx_dir, layout.onnx)
    layout.merged.mkdir()
    layout.heldout.write_text("".join(json.dumps(r) + "\n" for r in relabelled))
    return dest


@pytest.mark.e2e
def test_bad_accuracy_is_rolled_back_at_the_first_step(tiny_onnx_dir, tmp_path):
    run = relabelled_run(tiny_onnx_dir, tmp_path / "run")
    onnx_dir = RunLayout(run).onnx
    arms = [ArmSource("fp32", onnx_dir, "fp32"),
            ArmSource("flipped", flipped_export(onnx_dir, tmp_path / "flipped"), "fp32", model="flipped")]
    s = rollout_drill_run(drill_config(run, tmp_path), "bad", arms,
                          section([25, 50, 100], ["error_rate", "latency_p99"], {"error_rate": 0.05, "latency_p99": 0.5}), 45)
    assert (s["decision"], s["step"], s["percent"]) == ("rollback", 1, 0.0), s["reason"]
    assert s["reason"].startswith("accuracy worse"), s["reason"]
    assert s["decided_in_s"] is not None and s["decided_in_s"] > 0
    assert 0 < s["candidate_users"] <= s["candidate_requests"], "users exposed are counted from the store"
    assert s["failed_requests"] == 0
    page = snapshot_data(Path(s["folder"]))  # the live page as the drill ended: the rollback and its evidence
    assert page["state"]["state"] == "rolled back" and page["timeline"][-1]["action"] == "rollback"
    assert page["looks_total"] > 0 and page["report"]["judge"]["headline"]


def snapshot_data(folder: Path) -> dict:
    """The page's document embedded in a drill's snapshot (``page.html``)."""
    html = (folder / "page.html").read_text()
    settings = re.search(r'<script type="application/json" id="page-settings">(.*?)</script>', html, re.S)
    assert settings is not None and all((folder / "page-assets" / f).is_file() for f in ASSETS)
    return json.loads(settings.group(1))["data"]


@pytest.mark.e2e
def test_slow_candidate_is_rolled_back_on_p99(tiny_onnx_dir, tmp_path):
    arms = [ArmSource("int8", tiny_onnx_dir, "int8"),
            ArmSource("fp32-slow", tiny_onnx_dir, "fp32", model="slow", max_queue_delay_us=200_000)]
    s = rollout_drill_run(drill_config(tiny_onnx_dir.parent, tmp_path), "slow", arms,
                          section([50, 100], ["error_rate", "latency_p99"], {"error_rate": 0.05, "latency_p99": 0.01}), 45)
    assert (s["decision"], s["step"], s["percent"]) == ("rollback", 1, 0.0), s["reason"]
    assert "latency_p99 worse" in s["reason"], s["reason"]
    assert s["failed_requests"] == 0
