"""The router's report carries the unit-level judge's verdicts: from the recorder's in-memory judge (fed on every
answer, server error and feedback with its user and period) and in the Markdown a person reads."""

from __future__ import annotations

import random

import numpy as np

from experiments.experiment_report import build_report, render_markdown
from experiments.judge import Judge, judge
from experiments.spec import Arm, Experiment, Sticky
from serving.router.metrics import Recorder, RequestRef

EXP = Experiment("ab", (Arm("control", "m", "1", 50), Arm("int8", "m", "2", 50)), Sticky("header", "X-User-Id"))


def sticky_traffic(recorder: Recorder, rng: random.Random, n: int, period: int, share: float,
                   int8_scale: float = 0.5, int8_correct: float = 0.75, start: int = 0) -> None:
    """``n`` requests of 400 users (user ``k`` in int8 when its bucket is below ``share``), each with feedback;
    int8 answers in ``int8_scale`` of the time and is right ``int8_correct`` of the time (control: 0.85)."""
    for i in range(start, start + n):
        user = rng.randrange(400)
        arm = "int8" if (user * 0.618) % 1 < share else "control"
        rid = f"r{i}"
        if arm == "int8" and rng.random() < 0.04:
            recorder.error(arm, 503, RequestRef(rid, f"u{user}", arm, period))
            continue
        latency = rng.lognormvariate(np.log(0.010), 0.3) * (int8_scale if arm == "int8" else 1.0)
        label = "pos" if rng.random() < 0.5 else "neg"
        recorder.served(rid, arm, latency, (label,), key=f"u{user}", assigned=arm, period=period,
                        confidences=(0.9,))
        right = rng.random() < (int8_correct if arm == "int8" else 0.85)
        recorder.feedback(rid, (label if right else ("neg" if label == "pos" else "pos"),))


def test_report_has_the_judges_verdicts_from_the_recorders_in_memory_judge():
    recorder = Recorder("ab")
    recorder.start_judge(EXP.arm_names, EXP.shares, 1)
    sticky_traffic(recorder, random.Random(5), 12000, 1, 0.5)
    table = recorder.unit_table()
    assert table is not None and set(table.periods) == {1}
    r = build_report(EXP, recorder.snapshot(), table, alpha=0.05, resamples=200)
    assert r["judge"] == judge(table).to_dict(), "the report's judge section is the judge's own"
    assert r["judge"]["sample_ratio"]["verdict"] == "no mismatch detected"
    m = r["judge"]["treatments"]["int8"]["metrics"]
    assert m["latency_mean"]["verdict"] == "better" and m["latency_mean"]["high"] < -3  # 10 ms -> 5 ms
    p99 = m["latency_p99"]  # int8's share over the control's p99 is ~0 against the control's ~1 %: within the margin
    assert p99["verdict"] in ("better", "equivalent within margin") and p99["estimate"] < 0 < p99["threshold_ms"]
    assert m["accuracy"]["verdict"] == "worse"  # 0.85 -> 0.75
    assert m["error_rate"]["verdict"] == "worse"
    assert m["label_distribution"]["verdict"] == "equivalent within margin"
    assert m["confidence_mean"]["verdict"] == "equivalent within margin"
    # the units are users, not requests: ~200 per arm, and clustering shows in the design effect
    assert 150 < m["accuracy"]["units_treatment"] <= 250 < m["accuracy"]["n_treatment"]
    assert m["latency_mean"]["design_effect"] >= 1.0

    md = render_markdown(r)
    assert md.splitlines()[2] == f"**{r['judge']['headline']}**", "the Markdown starts with the headline"
    assert r["judge"]["headline"].startswith("No sample ratio mismatch. int8 vs control: worse on error_rate")
    assert "Unit of analysis: the user: the sticky key (the header `X-User-Id`)" in md
    assert md.index("### Sample ratio: **no mismatch detected**") < md.index("### `int8`") < md.index("## Arms")
    assert (f"| latency p99 | share of answers slower than {p99['threshold_ms']:g} ms (`control`'s p99 over its "
            f"first 500 answers, on the latency grid) | **{p99['verdict']}** |") in md
    assert "| accuracy | correct answers per feedback | **worse** |" in md
    assert "they describe and decide nothing" in md


def test_weight_changes_are_periods_and_requests_in_flight_keep_theirs():
    """The state moves the recorder's judge to a new period on each weight change; an answer assigned before
    the change is recorded in the period it was assigned in; new arms start a fresh judge."""
    recorder = Recorder("ab")
    recorder.start_judge(EXP.arm_names, {"control": 0.9, "int8": 0.1}, 1)
    recorder.experiment_changed(EXP.arm_names, {"control": 0.9, "int8": 0.1}, 1)  # the same period: nothing new
    recorder.experiment_changed(EXP.arm_names, {"control": 0.5, "int8": 0.5}, 2)
    recorder.served("late", "int8", 0.004, ("pos",), key="u1", assigned="int8", period=1)  # in flight
    recorder.served("now", "int8", 0.004, ("pos",), key="u1", assigned="int8", period=2)
    recorder.error("control", 503, RequestRef("failed", "u2", "control", 2))
    recorder.error("control", 504)  # an attempt a fallback followed: not a request's outcome
    assert recorder.feedback("late", ("pos",)) == ("int8", True)
    table = recorder.unit_table()
    assert table.periods == {1: {"control": 0.9, "int8": 0.1}, 2: {"control": 0.5, "int8": 0.5}}
    rows = sorted(zip(table.period.tolist(), table.arm.tolist(), table.requests.tolist(),
                      table.server_errors.tolist(), table.feedback_correct.tolist(), strict=True))
    assert rows == [(1, 1, 1, 0, 1), (2, 0, 1, 1, 0), (2, 1, 1, 0, 0)]
    recorder.experiment_changed(("control", "int8", "fp16"), {"control": 0.5, "int8": 0.25, "fp16": 0.25}, 3)
    fresh = recorder.unit_table()
    assert fresh.arms == ("control", "int8", "fp16") and fresh.rows == 0 and set(fresh.periods) == {3}
    recorder.served("old", "gone", 0.004, ("pos",), key="u9", assigned="gone", period=2)  # never an error
    assert recorder.unit_table().rows == 0


def test_a_recorder_without_a_judge_gives_a_report_without_verdicts():
    recorder = Recorder("ab")  # with a store the judge reads the store; the store is down: no verdicts
    recorder.served("r1", "control", 0.01, ("pos",), key="u1", assigned="control", period=1)
    assert recorder.unit_table() is None
    r = build_report(EXP, recorder.snapshot(), None, resamples=100)
    assert r["judge"] is None and r["arms"]["control"]["requests"] == 1
    md = render_markdown(r)
    assert "**No verdicts: the judge's unit table is unavailable.**" in md and "## Arms" in md


def test_report_with_no_data_is_not_enough_evidence():
    table = Judge(arms=EXP.arm_names).table()
    r = build_report(EXP, {"arms": {}, "shadow": {}}, table, resamples=100)
    assert {m["verdict"] for m in r["judge"]["treatments"]["int8"]["metrics"].values()} == {"not enough evidence yet"}
    md = render_markdown(r)
    assert "not enough evidence yet" in md and "(not set yet)" in md  # no tail threshold before 500 answers
