"""The router's report carries the anytime-valid judge's verdicts, beside the fixed-horizon snapshot."""

from __future__ import annotations

from collections import Counter

import numpy as np

from experiments.arm_record import ArmRecord
from experiments.experiment_report import build_report, render_markdown
from experiments.spec import Arm, Experiment


def _record(rng: np.random.Generator, n: int, scale: float, positive: int, correct: int, errors: int = 0) -> ArmRecord:
    return ArmRecord(latency=rng.lognormal(np.log(0.010), 0.3, n) * scale, requests=n,
                     errors=Counter({"503": errors}) if errors else Counter(),
                     labels=Counter(pos=positive, neg=n - positive), feedback_correct=correct, feedback_total=n)


def test_report_has_judge_verdicts_and_a_labelled_snapshot():
    rng = np.random.default_rng(5)
    exp = Experiment("ab", (Arm("control", "m", "1", 50), Arm("int8", "m", "2", 50)))
    snap = {"arms": {"control": _record(rng, 4000, 1.0, 2000, 3400),
                     "int8": _record(rng, 4000, 0.5, 2010, 3000, errors=150)}, "shadow": {}}
    r = build_report(exp, snap, alpha=0.05, resamples=200, rng=rng)
    j = r["judge"]["int8"]
    assert j["alpha_per_metric"] == 0.05 / 6
    m = j["metrics"]
    assert m["latency_mean"]["verdict"] == "better" and m["latency_mean"]["high"] < -3  # 10 ms -> 5 ms
    assert m["latency_p99"]["verdict"] == "better"
    assert m["accuracy"]["verdict"] == "worse"  # 0.85 -> 0.75
    assert m["error_rate"]["verdict"] == "worse" and m["error_rate"]["n_treatment"] == 4150  # 503s are requests too
    assert m["label_distribution"]["verdict"] == "equivalent within margin"
    assert m["confidence_mean"]["verdict"] == "not enough evidence yet"  # the router does not record it yet
    md = render_markdown(r)
    judge_at, snapshot_at = md.index("## Verdicts (anytime-valid"), md.index("## Snapshot (fixed-horizon, valid for one look only)")
    assert judge_at < snapshot_at
    assert "| accuracy | **worse** |" in md and "| latency p99 | **better** |" in md


def test_report_with_no_data_is_not_enough_evidence():
    exp = Experiment("ab", (Arm("control", "m", "1", 50), Arm("int8", "m", "2", 50)))
    r = build_report(exp, {"arms": {}, "shadow": {}}, resamples=100)
    assert {m["verdict"] for m in r["judge"]["int8"]["metrics"].values()} == {"not enough evidence yet"}
    assert "not enough evidence yet" in render_markdown(r)
