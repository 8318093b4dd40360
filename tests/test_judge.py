"""The judge's API: verdicts from samples or snapshots, validation, and the old tests' vectorised copies."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from experiments import fixed_horizon as stats
from experiments.judge import ArmStats, Judge, JudgeConfig, Moments, fixed, judge


def _feed(j: Judge, rng: np.random.Generator, n: int, arms: dict[str, dict]) -> None:
    for _ in range(n):
        for arm, p in arms.items():
            if rng.random() < p.get("errors", 0.0):
                j.failed(arm)
                continue
            pos = rng.random() < p.get("positive", 0.5)
            j.answered(arm, float(rng.lognormal(np.log(10), 0.3)) * p.get("slower", 1.0),
                       "positive" if pos else "negative", float(rng.beta(8, 2)))
            j.feedback(arm, bool(rng.random() < p.get("accuracy", 0.85)))


def test_not_enough_evidence_then_equivalent_for_identical_arms():
    rng = np.random.default_rng(0)
    j = Judge(arms=("control", "int8"))
    _feed(j, rng, 50, {"control": {}, "int8": {}})
    early = j.report()["int8"].metrics
    assert {r.verdict for r in early.values()} == {"not enough evidence yet"}
    _feed(j, rng, 6000, {"control": {}, "int8": {}})
    late = j.report()["int8"].metrics
    assert late["latency_mean"].verdict == "equivalent within margin"
    assert late["confidence_mean"].verdict == "equivalent within margin"
    assert late["label_distribution"].verdict == "equivalent within margin"
    for r in late.values():  # every CS still covers the true difference, 0
        assert r.low <= 0 <= r.high


def test_worse_treatment_is_worse_with_the_size_of_the_difference():
    rng = np.random.default_rng(1)
    j = Judge(JudgeConfig(alpha=0.05), arms=("control", "slow"))
    _feed(j, rng, 4000, {"control": {"errors": 0.0}, "slow": {"slower": 1.5, "accuracy": 0.75, "errors": 0.03,
                                                               "positive": 0.6}})
    r = j.report()["slow"].metrics
    assert r["latency_mean"].verdict == r["latency_p99"].verdict == "worse"
    assert r["latency_mean"].low > 2.0  # 10 ms * 1.5 -> about +5 ms
    assert r["accuracy"].verdict == "worse" and r["accuracy"].high < 0
    assert r["error_rate"].verdict == "worse" and r["error_rate"].low > 0
    assert r["label_distribution"].verdict == "different"
    assert set(r["label_distribution"].per_label) == {"negative", "positive"}


def test_snapshot_from_aggregates_gives_the_same_verdicts_as_samples():
    rng = np.random.default_rng(2)
    lat_c, lat_t = rng.lognormal(2.3, 0.3, 3000), rng.lognormal(2.3, 0.3, 3000) * 1.3
    conf = rng.beta(8, 2, 3000)

    def arm(lat: np.ndarray, aggregated: bool) -> ArmStats:
        return ArmStats(requests=3000, server_errors=3, latency_ms=lat,
                        latency_clipped=Moments.of(np.minimum(lat, 1000.0)) if aggregated else None,
                        labels={"a": 1400, "b": 1600}, confidence=Moments.of(conf),
                        feedback_correct=2500, feedback_total=3000)

    from_samples = judge(arm(lat_c, False), arm(lat_t, False)).to_dict()
    from_store = judge(arm(lat_c, True), arm(lat_t, True)).to_dict()
    assert from_samples == from_store
    assert from_store["metrics"]["latency_mean"]["verdict"] == "worse"
    acc = from_store["metrics"]["accuracy"]  # same accuracy: the CS holds 0 but is still wider than +-0.02
    assert acc["verdict"] == "no decision yet" and acc["low"] < -0.02 < 0 < 0.02 < acc["high"]


def test_more_treatments_split_alpha():
    one = judge(ArmStats(), ArmStats(), comparisons=1)
    three = judge(ArmStats(), ArmStats(), comparisons=3)
    assert three.alpha_per_metric == pytest.approx(one.alpha_per_metric / 3) == pytest.approx(0.05 / 18)


def test_bad_config_and_snapshot_name_the_field():
    with pytest.raises(ValueError, match=r"alpha=2.*margins\.accuracy=-1"):
        JudgeConfig.from_dict({"alpha": 2, "margins": {"accuracy": -1}})
    with pytest.raises(ValueError, match=r"server_errors=5: expected 0..requests \(3\)"):
        ArmStats(requests=3, server_errors=5)
    with pytest.raises(KeyError, match="unknown arm 'x'"):
        Judge(arms=("a", "b")).answered("x", 1.0)
    with pytest.raises(ValueError, match="at least one treatment"):
        Judge(arms=("a",))


def test_vectorised_old_tests_agree_with_router_stats():
    rng = np.random.default_rng(3)
    alpha = 0.05
    for _ in range(20):
        n = int(rng.integers(30, 800))
        c, t = rng.lognormal(0, 0.5, n), rng.lognormal(0, 0.5, n) * rng.choice([1.0, 1.1, 1.3])
        want = stats.verdict_from_interval(stats.quantile_diff_ci(c, t, 0.99, alpha), higher_is_better=False)
        got = fixed.quantile_diff_significant(np.sort(c)[None], np.sort(t)[None], 0.99, alpha)[0]
        assert {1.0: stats.WORSE, -1.0: stats.BETTER, 0.0: stats.NO_DIFFERENCE}[got] == want
        want = stats.verdict_from_interval(stats.mean_diff_ci(c, t, alpha), higher_is_better=False)
        got = fixed.welch_significant(n, c.sum(), (c * c).sum(), t.sum(), (t * t).sum(), alpha)
        assert {1.0: stats.WORSE, -1.0: stats.BETTER, 0.0: stats.NO_DIFFERENCE}[float(got)] == want
        kc, kt = int(rng.binomial(n, 0.8)), int(rng.binomial(n, 0.75))
        want = stats.verdict_from_interval(stats.proportion_diff_ci(kc, n, kt, n, alpha), higher_is_better=True)
        got = float(fixed.newcombe_significant(kc, n, kt, n, alpha))
        assert {1.0: stats.BETTER, -1.0: stats.WORSE, 0.0: stats.NO_DIFFERENCE}[got] == want
        pc, pt = int(rng.binomial(n, 0.5)), int(rng.binomial(n, 0.56))
        chi = stats.label_chi_square(Counter(a=pc, b=n - pc), Counter(a=pt, b=n - pt))
        got = bool(fixed.chi_square_significant(np.array([pc, n - pc]), np.array([pt, n - pt]), alpha))
        assert got == (stats.verdict_from_p(chi.p_value, alpha) == stats.DIFFERENT)
