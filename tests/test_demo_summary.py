"""The demo's summary prints the judge's headline, its sample-ratio check and verdicts (with their sizes), and
the drift monitor's findings."""

from __future__ import annotations

import json

from workflows.demo import format_summary, summarize


def _metric(verdict: str, estimate=None, low=None, high=None, unit: str = "") -> dict:
    return {"verdict": verdict, "estimate": estimate, "low": low, "high": high, "unit": unit, "margin": 1.0,
            "n_control": 600, "n_treatment": 600, "min_samples": 200}


def test_summary_prints_the_judges_verdicts_and_the_drift(tmp_path):
    load = {"variants": {"control": {"p50_ms": 11.0, "p99_ms": 21.0, "failures": 0},
                         "treatment": {"p50_ms": 8.0, "p99_ms": 16.0, "failures": 0}}, "warnings": []}
    arm = {"requests": 600, "accuracy": {"estimate": 0.8, "low": 0.77, "high": 0.83}}
    ab = {"arms": {"control": arm, "treatment": arm},
          "judge": {"headline": "No sample ratio mismatch. treatment vs control: better on latency_mean; 2 undecided.",
                    "sample_ratio": {"verdict": "no mismatch detected"},
                    "treatments": {"treatment": {"metrics": {
                        "latency_mean": _metric("better", -2.04, -3.1, -1.2, " ms"),
                        "accuracy": _metric("no decision yet", -0.02, -0.08, 0.04),
                        "confidence_mean": _metric("equivalent within margin", 0.001, -0.01, 0.01),
                        "drift": _metric("worse", 0.5, None, None, " PSI")}}}},
          "drift": {"treatment": {"text_length": {"psi": 0.5, "drifted": True}},
                    "control": {"text_length": {"psi": 0.02, "drifted": False}}}}
    (tmp_path / "summary.json").write_text(json.dumps(load))
    (tmp_path / "router_report.json").write_text(json.dumps(ab))
    parity = {"variants": {"fp32": {"accuracy": 0.81}, "int8": {"accuracy": 0.80}}}
    training = {"test_before": {"accuracy": 0.5}, "test_after": {"accuracy": 0.8}}
    summary = summarize(tmp_path, tmp_path, training, parity, {"fp32": "1", "int8": "2"}, 12.0)
    text = format_summary(summary)
    assert "judge: No sample ratio mismatch. treatment vs control: better on latency_mean; 2 undecided." in text
    line = next(x for x in text.splitlines() if x.startswith("judge (anytime-valid"))
    assert line.startswith("judge (anytime-valid, users as units), sample ratio: no mismatch detected;")
    assert "latency mean: better (-2.04 ms [-3.1, -1.2])" in line
    assert "accuracy: no decision yet" in line and "confidence mean: equivalent within margin" in line
    assert "drift: worse (0.5 PSI)" in line
    assert "drift against the training reference: treatment text_length (PSI 0.50)" in text
    assert summary["sample_ratio"] == "no mismatch detected" and "drift" in summary["verdicts_treatment_vs_control"]
