"""The judge's API: units, periods, feedback, unkeyed requests, verdicts, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.judge import Judge, JudgeConfig, judge
from experiments.judge.units import PSEUDO_UNITS


def _feed(j: Judge, rng: np.random.Generator, n: int, arms: dict[str, dict], users: int = 400) -> None:
    """``n`` requests per arm from ``users`` sticky users per arm, each with its own latency level."""
    level = {a: rng.lognormal(0, 0.2, users) for a in arms}
    for _ in range(n):
        for arm, p in arms.items():
            u = int(rng.integers(users))
            key = f"{arm}-{u}"
            if rng.random() < p.get("errors", 0.0):
                j.failed(arm, unit=key)
                continue
            pos = rng.random() < p.get("positive", 0.5)
            j.answered(arm, float(rng.lognormal(np.log(10), 0.3) * level[arm][u]) * p.get("slower", 1.0),
                       "positive" if pos else "negative", float(rng.beta(8, 2)), unit=key)
            j.feedback(arm, bool(rng.random() < p.get("accuracy", 0.85)), unit=key)


def test_not_enough_evidence_then_equivalent_for_identical_arms():
    rng = np.random.default_rng(0)
    j = Judge(arms=("control", "int8"))
    _feed(j, rng, 50, {"control": {}, "int8": {}})
    early = j.report()
    assert {r.verdict for r in early.treatments["int8"].metrics.values()} == {"not enough evidence yet"}
    json.dumps(early.to_dict(), allow_nan=False)  # JSON as it is, no NaN or Infinity
    _feed(j, rng, 6000, {"control": {}, "int8": {}})
    v = j.report()
    late = v.treatments["int8"].metrics
    assert late["latency_mean"].verdict == "equivalent within margin"
    assert late["label_distribution"].verdict == "equivalent within margin"
    assert late["latency_p99"].threshold_ms is not None and late["latency_p99"].unit == ""
    for r in late.values():  # every CS still covers the true difference, 0
        assert r.low <= 0 <= r.high
    assert late["latency_mean"].units_control == late["latency_mean"].units_treatment == 400
    assert late["latency_mean"].design_effect > 1.5  # users' latency levels differ: requests are clustered
    assert v.sample_ratio.verdict == "no mismatch detected"
    assert v.headline.startswith("No sample ratio mismatch. int8 vs control:")
    json.dumps(v.to_dict(), allow_nan=False)


def test_worse_treatment_is_worse_with_the_size_of_the_difference():
    rng = np.random.default_rng(1)
    j = Judge(JudgeConfig(alpha=0.05), arms=("control", "slow"))
    _feed(j, rng, 4000, {"control": {}, "slow": {"slower": 1.5, "accuracy": 0.75, "errors": 0.03, "positive": 0.6}})
    r = j.report().treatments["slow"].metrics
    assert r["latency_mean"].verdict == r["latency_p99"].verdict == "worse"
    assert r["latency_mean"].low > 2.0  # 10 ms * 1.5 -> about +5 ms
    assert r["latency_p99"].low > 0.05  # far more answers above the control's p99 than its 1 %
    assert r["accuracy"].verdict == "worse" and r["accuracy"].high < 0
    assert r["error_rate"].verdict == "worse" and r["error_rate"].low > 0
    assert r["label_distribution"].verdict == "different"
    assert set(r["label_distribution"].per_label) == {"negative", "positive"}


def test_table_rows_are_units_periods_and_arms():
    j = Judge(arms=("control", "t"), weights={"control": 95, "t": 5})
    j.answered("t", 5.0, label=("a", "b", "a"), confidence=(0.9, 0.8, 0.7), unit="u1")
    j.answered("t", 7.0, label="a", unit="u1")
    j.answered("control", 6.0, unit="u1", assigned="t")  # a fallback: served by control, assigned to t
    j.failed("t", unit="u2")
    j.failed("t", server_error=False, unit="u2")  # a client error: the caller's, never counted
    assert j.weights_changed({"control": 75, "t": 25}) == 1 == j.period
    j.answered("t", 9.0, label="b", unit="u1")
    j.feedback("t", correct=True, unit="u1", period=0)  # the answer was served in period 0
    j.feedback("t", correct=False, unit="u1")
    tab = j.table()
    assert tab.periods == {0: {"control": 95.0, "t": 5.0}, 1: {"control": 75.0, "t": 25.0}}
    rows = {(int(a), int(s), int(p), int(u)): i
            for i, (a, s, p, u) in enumerate(zip(tab.arm, tab.assigned, tab.period, tab.unit, strict=True))}
    u1 = int(tab.unit[rows[next(k for k in rows if k[:3] == (1, 1, 0))]])
    first = rows[(1, 1, 0, u1)]
    assert (tab.requests[first], tab.answered[first], tab.predictions[first]) == (2, 2, 4)
    assert tab.latency_sum[first] == 12.0 and tab.latency_sq[first] == 25.0 + 49.0
    assert tab.labels["a"][first] == 3 and tab.labels["b"][first] == 1
    assert tab.confidence_n[first] == 3 and tab.confidence_sum[first] == pytest.approx(2.4)
    assert (tab.feedback_n[first], tab.feedback_correct[first]) == (1, 1)
    later = rows[(1, 1, 1, u1)]
    assert (tab.requests[later], tab.feedback_n[later], tab.feedback_correct[later]) == (1, 1, 0)
    assert tab.requests[rows[(0, 1, 0, u1)]] == 1  # the fallback row keeps its assignment
    u2 = next(k for k in rows if k[3] != u1)
    assert (tab.requests[rows[u2]], tab.server_errors[rows[u2]]) == (1, 1)
    assert tab.keyed.all() and tab.tail is None  # no control answers yet: no tail threshold


def test_named_periods_and_requests_in_flight_across_a_weight_change():
    """The router names its periods (store revisions): a request assigned before a change is recorded in the
    period it started in, after the new period began."""
    j = Judge(arms=("control", "t"), weights={"control": 90, "t": 10}, period=3)
    assert j.period == 3 and j.weights_changed({"control": 50, "t": 50}, period=7) == 7
    j.answered("t", 5.0, unit="u1", period=3)  # in flight across the change
    j.failed("control", unit="u2", period=3)
    j.answered("t", 6.0, unit="u1")  # the current period: 7
    j.feedback("t", correct=True, unit="u1", period=3)
    tab = j.table()
    assert tab.periods == {3: {"control": 90.0, "t": 10.0}, 7: {"control": 50.0, "t": 50.0}}
    got = sorted((int(p), int(a), int(r), int(e), int(f)) for p, a, r, e, f in
                 zip(tab.period, tab.arm, tab.requests, tab.server_errors, tab.feedback_n, strict=True))
    assert got == [(3, 0, 1, 1, 0), (3, 1, 1, 0, 1), (7, 1, 1, 0, 0)]
    with pytest.raises(ValueError, match=r"period=5: expected one of the periods so far, \[3, 7\]"):
        j.answered("t", 1.0, period=5)


def test_unkeyed_requests_are_units_of_their_own_in_pseudo_units():
    j = Judge(arms=("control", "t"))
    for _ in range(3 * PSEUDO_UNITS):
        j.answered("control", 10.0)
    tab = j.table()
    assert tab.rows == PSEUDO_UNITS and not tab.keyed.any()
    assert set(tab.requests.tolist()) == {3.0}
    v = judge(tab)
    assert v.sample_ratio.units["control"]["observed"] == 3 * PSEUDO_UNITS  # each request a unit of its own


def test_tail_threshold_from_the_control_first_answers():
    j = Judge(JudgeConfig.from_dict({"min_samples": {"latency_p99": 100}}), arms=("control", "t"))
    for i in range(100):
        j.answered("t", 50.0, unit=f"t{i}")
        j.answered("control", 10.0 if i < 99 else 30.0, unit=f"c{i}")
    tab = j.table()  # the p99 of 99 x 10 ms and 1 x 30 ms is 10 ms: the threshold is the next grid edge
    assert tab.tail_threshold_ms is not None and 10.0 <= tab.tail_threshold_ms < 10.0 * 2 ** 0.25
    assert tab.tail[tab.arm == 1].sum() == 100 and tab.tail[tab.arm == 0].sum() == 1
    j.answered("control", 1000.0, unit="late")  # later answers never move the threshold
    assert j.table().tail_threshold_ms == tab.tail_threshold_ms


def test_judge_of_the_table_is_the_report():
    rng = np.random.default_rng(4)
    j = Judge(arms=("control", "a", "b"))
    _feed(j, rng, 300, {"control": {}, "a": {}, "b": {"slower": 2.0}}, users=50)
    assert judge(j.table(), j.config).to_dict() == j.report().to_dict()
    assert set(j.report().treatments) == {"a", "b"}


def test_more_treatments_split_alpha_with_the_sample_ratio_check():
    cfg = JudgeConfig()
    assert cfg.alpha_per_metric(1) == pytest.approx(0.05 / 7)
    assert cfg.alpha_per_metric(3) == pytest.approx(0.05 / 19)
    j = Judge(arms=("c", "t1", "t2", "t3"))
    v = j.report()
    assert v.treatments["t1"].alpha_per_metric == pytest.approx(0.05 / 19) == v.sample_ratio.alpha


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match=r"alpha=2.*margins\.latency_p99=2.0: expected a difference of shares "
                                         r"in \[0, 1\] \(default 0.01\).*margins\.accuracy=-1"):
        JudgeConfig.from_dict({"alpha": 2, "margins": {"accuracy": -1, "latency_p99": 2.0}})
    with pytest.raises(KeyError, match="unknown arm 'x'"):
        Judge(arms=("a", "b")).answered("x", 1.0)
    with pytest.raises(ValueError, match="at least one treatment"):
        Judge(arms=("a",))
    with pytest.raises(ValueError, match=r"latency_ms=nan: expected a finite number >= 0"):
        Judge(arms=("a", "b")).answered("a", float("nan"))
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['z'\]"):
        Judge(arms=("a", "b")).weights_changed({"a": 1, "z": 1})
    with pytest.raises(ValueError, match=r"period=7: expected one of the periods so far, \[0\]"):
        Judge(arms=("a", "b")).feedback("a", True, period=7)
    with pytest.raises(ValueError, match=r"period 3: expected a period after the current one \(5\)"):
        Judge(arms=("a", "b"), period=5).weights_changed({"a": 1}, period=3)
