"""The loop drills end to end on the tiny model, in a reduced form: the real tritonserver, the real router keeping
inputs, Locust sending the shifted reviews with feedback, the loop triggered by the label count, training,
export, the offline gate, publish, and the rollout controller; ``loop.json`` holds every field the docs name.
The tiny model sits near chance, so the good drill checks the cycle's mechanics and the coherence of its outcome;
promotion itself is the full drill's bar on the demo model (``make loop-drill``). The poisoned drill must never
promote, on any model."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.config import ExportConfig
from export.pipeline import run_export
from tests.conftest import tiny_train_config
from training.train import train
from workflows.drills.common import DrillConfig
from workflows.drills.loop import loop_drill

pytestmark = [pytest.mark.e2e]
FIELDS = ("promoted", "accuracy_shifted_before", "accuracy_shifted_after", "accuracy_original_before",
          "accuracy_original_after", "seconds_shift_to_trigger", "seconds_trigger_to_promotion", "failed_requests",
          "poisoned")


@pytest.fixture(scope="module")
def production_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny production model that has learnt something: full fine-tuning on 6000 reviews, fp32 exported."""
    runs = tmp_path_factory.mktemp("loop-runs")
    cfg = tiny_train_config(runs, tiny_model_dir, name="production", method="full", max_examples=6000, max_steps=200,
                            eval_every=100, batch_size=32, learning_rate=1e-3, max_length=48)
    adapter = train(cfg).adapter_dir
    result = run_export(ExportConfig(adapter=adapter, runs_dir=runs, publish=False, variants=("fp32",)))
    assert result.passed
    return runs / "production"


def drill_config(run: Path, out: Path) -> DrillConfig:
    return DrillConfig(run=run, out_dir=out, rate=25.0, loop_clean_s=4.0, loop_load_s=420.0, loop_labels=200,
                       loop_method="full", loop_max_steps=150, loop_learning_rate=1e-3, loop_batch_size=32)


def check_report(s: dict) -> None:
    for field in FIELDS:
        assert field in s, field
    for name in FIELDS[1:5]:
        a = s[name]
        assert 0 <= a["low"] <= a["value"] <= a["high"] <= 1, (name, a)
    for name in ("accuracy_shifted_gain", "accuracy_original_gain"):
        g = s[name]
        assert -1 <= g["low"] <= g["value"] <= g["high"] <= 1, (name, g)
    if not s["promoted"]:
        assert s["accuracy_shifted_gain"]["value"] == 0 == s["accuracy_original_gain"]["value"]  # the same model
    assert s["failed_requests"] == 0 and s["requests"] > 0
    assert s["seconds_shift_to_trigger"] is not None and s["seconds_shift_to_trigger"] >= 0  # triggered after the shift
    assert s["before_shift"]["requests"] > 0 and s["requests"] > s["before_shift"]["requests"]
    assert (Path(s["folder"]) / "loop.md").is_file()
    assert s["steps"]["dataset"]["train_original"] > 0  # original data mixed in


def test_the_loop_drill_retrains_on_the_shift_and_the_judge_decides(production_run, tmp_path):
    s = loop_drill(drill_config(production_run, tmp_path))
    check_report(s)
    assert not s["poisoned"] and s["trigger"].startswith(("new_labels", "drift"))
    # the tiny production model sits near chance, so whether the candidate earns promotion varies; what must hold:
    # the cycle ran to the offline gate on the traffic's feedback, and its outcome agrees with its steps
    assert s["steps"]["dataset"]["feedback_examples"] >= 200 and "gate" in s["steps"]
    assert s["outcome"] in ("promoted", "refused", "rollback"), s["outcome"]
    assert (s["outcome"] == "refused") == (not s["steps"]["gate"]["passed"])
    if s["promoted"]:
        assert s["steps"]["gate"]["passed"] and s["steps"]["canary"]["outcome"] == "complete"
        assert s["accuracy_shifted_after"]["value"] > s["accuracy_shifted_before"]["value"]
        assert s["seconds_trigger_to_promotion"] > 0 and len(s["users_by_version"]) == 2
    else:
        assert s["accuracy_shifted_after"] == s["accuracy_shifted_before"]  # production still serves


def test_the_poisoned_loop_drill_never_promotes(production_run, tmp_path):
    s = loop_drill(drill_config(production_run, tmp_path), poisoned=True)
    check_report(s)
    assert s["poisoned"] and not s["promoted"] and s["shift"]["labels_flipped"] > 0
    assert s["accuracy_shifted_after"] == s["accuracy_shifted_before"]  # production still serves
    assert s["seconds_trigger_to_promotion"] is None


def test_a_candidate_past_the_gate_is_published_loaded_and_judged_live(production_run, tmp_path):
    """The offline gate switched off: the canary's whole path runs (publish, Triton load, the loop's revision, the
    rollout controller's ramp, and on completion the production arm pointed at the new version)."""
    off = {"min_gain": -0.99, "max_forgetting": 1.0, "max_label_gap": 1.0}
    s = loop_drill(drill_config(production_run, tmp_path), loop_overrides=off)
    check_report(s)
    assert s["steps"]["gate"]["passed"] and s["steps"]["publish"]["version"] == "2"
    canary = s["steps"]["canary"]
    assert canary["outcome"] in ("complete", "rollback", "hold"), canary
    assert canary["candidate_requests"] > 0 and "2" in s["users_by_version"]  # version 2 served real traffic
    assert s["promoted"] == (canary["outcome"] == "complete")
    if s["promoted"]:
        assert canary["promotion_revision"] > 0 and s["seconds_trigger_to_promotion"] > 0
