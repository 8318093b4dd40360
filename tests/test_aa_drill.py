"""The A/A drill end to end on the tiny model: tritonserver, the router with its SQLite store, Locust users that
differ (their own windows of 1,000 reviews sorted by label and length, Zipf activity, feedback on every answer),
the report read every 2 seconds while the rollout controller ramps the treatment 20 -> 50 -> 100 %.

Both arms serve one version, so any "better", "worse", "different" or "sample ratio mismatch" is false. The
tiny random model gives every text nearly the same logits; its classifier bias is shifted to their median over
the drill's reviews, so it predicts both labels (otherwise the label mix has no verdict at all) and, since its
logits move a little with text length, users with different windows get different label mixes.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from export.contract import VARIANT_FILES
from export.parity import onnx_logits, onnx_session
from export.publish import read_source
from tests.conftest import shift_bias
from training.data import read_bundled, write_jsonl
from tunestack.layout import RunLayout
from workflows.drills.aa import aa_drill
from workflows.drills.common import DrillConfig


def balanced_run(onnx_dir, dest, n: int = 1000):
    """A run folder whose held-out file is ``n`` bundled reviews and whose fp32 export predicts half of them
    positive."""
    examples = random.Random(0).sample(read_bundled(), n)
    src = read_source(onnx_dir, "fp32")
    logits = onnx_logits(onnx_session(src.onnx_file, 1), AutoTokenizer.from_pretrained(onnx_dir),
                         [e.text for e in examples], src.max_length, 32)
    layout = RunLayout(dest)
    shutil.copytree(onnx_dir, layout.onnx)
    layout.merged.mkdir(parents=True)
    write_jsonl(layout.heldout, examples)
    positive = src.labels.index("positive")
    shift_bias(layout.onnx / VARIANT_FILES["fp32"], positive,
               -float(np.median(logits[:, positive] - logits[:, 1 - positive])))
    return dest


@pytest.mark.e2e
def test_no_false_verdict_at_any_look_and_the_rollout_completes(tiny_onnx_dir, tmp_path):
    run = balanced_run(tiny_onnx_dir, tmp_path / "run")
    # the load stops 5 s after the rollout completes: at 100 % the control serves nothing, so no look after it
    # compares the arms in a new period. Up to 240 s of load (each step may wait 120 s for its verdicts): a busy
    # machine serves fewer than the 40 requests/s asked, and the stop after the decision keeps a quick run quick
    cfg = DrillConfig(run=run, out_dir=tmp_path, rate=40, aa_users=300, aa_activity=0.7, aa_load_s=240, look_s=2,
                      after_decision_s=5.0)
    s = aa_drill(cfg)
    assert s["false_verdicts"] == [], s["false_verdicts"]
    assert (s["decision"], s["step"]) == ("complete", 3), s["reason"]
    assert s["passed"] and s["failed_requests"] == 0 and s["failed_feedback"] == 0
    assert s["looks"] >= 20 and s["controller_looks"] >= 3, "the judge was read again and again during the run"
    end = s["judge_at_the_end"]
    # the ramp reached real users: the load stops soon after 100 %, so most saw the treatment at 20 % or 50 %
    assert end["sample_ratio"] == "no mismatch detected" and end["users"]["treatment"] > 25
    assert end["verdicts"]["label_distribution"] != "not enough evidence yet", "both labels are predicted"
    assert end["verdicts"]["accuracy"] != "not enough evidence yet", "feedback reached the judge"
    folder = tmp_path / s["folder"].split("/")[-1]
    assert folder.name.startswith("aa-drill-") and (folder / "drill.md").read_text().startswith("# A/A drill: PASS")
    assert json.loads((folder / "drill.json").read_text())["false_verdicts"] == []
