"""The report's statistics, checked by simulation: A/A false-positive rates near alpha, and power
near what theory predicts for a known injected difference. Vectorised where it matters; seconds."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats as sps

from serving.router import stats
from serving.router.config import Arm, Experiment
from serving.router.metrics import ArmRecord
from serving.router.report import build_report, render_markdown

ALPHA = 0.05
SIMS = 1000  # >= 500 experiments per check; SE of a 5 % rate is 0.7 points
MU, SIGMA = math.log(0.010), 0.5  # latency ~ lognormal, median 10 ms


def detected(ci: stats.Interval) -> bool:
    return ci.low > 0 or ci.high < 0


def lognormal_latencies(rng: np.random.Generator, sims: int, n: int, scale: float = 1.0) -> np.ndarray:
    return rng.lognormal(MU, SIGMA, size=(sims, n)) * scale


# -- exactness of the fast quantile bootstrap ---------------------------------------------------------

def test_exact_quantile_bootstrap_matches_resampling():
    rng = np.random.default_rng(0)
    x = rng.lognormal(MU, SIGMA, 200)
    for q in (0.5, 0.95, 0.99):
        brute = np.quantile(x[rng.integers(0, len(x), (20_000, len(x)))], q, axis=1, method="inverted_cdf")
        fast = stats.bootstrap_quantile(x, q, 20_000, rng)
        # same distribution: same mean and spread, and the same support (order statistics of x)
        assert set(np.unique(fast)) <= set(x)
        assert fast.mean() == pytest.approx(brute.mean(), rel=0.01)
        assert fast.std() == pytest.approx(brute.std(), rel=0.05)
        assert stats.quantile_bootstrap_var(x, q) == pytest.approx(brute.var(), rel=0.06)


def test_quantile_ci_covers_true_quantile():
    rng = np.random.default_rng(1)
    true_p95 = math.exp(MU + SIGMA * sps.norm.ppf(0.95))
    cis = [stats.quantile_ci(rng.lognormal(MU, SIGMA, 500), 0.95, ALPHA, 500, rng) for _ in range(300)]
    coverage = np.mean([c.low <= true_p95 <= c.high for c in cis])
    assert 0.91 <= coverage <= 0.99


# -- A/A: false positives at about alpha (3-7 %) -----------------------------------------------------------

def test_aa_p99_difference_false_positive_rate():
    rng = np.random.default_rng(2)
    a, b = lognormal_latencies(rng, SIMS, 1000), lognormal_latencies(rng, SIMS, 1000)
    fp = np.mean([detected(stats.quantile_diff_ci(a[i], b[i], 0.99, ALPHA)) for i in range(SIMS)])
    print(f"false-positive rate {fp:.3f}")
    assert 0.03 <= fp <= 0.07, fp


def test_aa_mean_difference_false_positive_rate():
    rng = np.random.default_rng(3)
    a, b = lognormal_latencies(rng, SIMS, 500), lognormal_latencies(rng, SIMS, 700)
    fp = np.mean([detected(stats.mean_diff_ci(a[i], b[i], ALPHA)) for i in range(SIMS)])
    print(f"false-positive rate {fp:.3f}")
    assert 0.03 <= fp <= 0.07, fp


def test_aa_label_distribution_false_positive_rate():
    rng = np.random.default_rng(4)
    p = [0.55, 0.35, 0.10]
    ca, cb = rng.multinomial(600, p, size=SIMS), rng.multinomial(400, p, size=SIMS)
    labels = ["neg", "pos", "neutral"]
    pvals = [stats.label_chi_square(dict(zip(labels, ca[i], strict=True)), dict(zip(labels, cb[i], strict=True))).p_value
             for i in range(SIMS)]
    fp = np.mean(np.array(pvals) < ALPHA)
    print(f"false-positive rate {fp:.3f}")
    assert 0.03 <= fp <= 0.07, fp


def test_aa_accuracy_false_positive_rate():
    rng = np.random.default_rng(5)
    n = 800
    ka, kb = rng.binomial(n, 0.8, SIMS), rng.binomial(n, 0.8, SIMS)
    fp = np.mean([detected(stats.proportion_diff_ci(int(ka[i]), n, int(kb[i]), n, ALPHA)) for i in range(SIMS)])
    print(f"false-positive rate {fp:.3f}")
    assert 0.03 <= fp <= 0.07, fp


# -- power: an injected difference is found as often as theory says ----------------------------------

POWER_SIMS = 500
POWER_TOL = 0.07  # 3 standard errors of a rate near 0.5-0.8 over 500 experiments, plus approximation error


def normal_power(effect: float, se: float, alpha: float = ALPHA) -> float:
    z = sps.norm.ppf(1 - alpha / 2)
    return float(sps.norm.cdf(effect / se - z) + sps.norm.cdf(-effect / se - z))


def test_power_mean_latency():
    rng = np.random.default_rng(6)
    n, shift = 500, 0.001  # +1 ms on a ~11.3 ms mean (sd ~6 ms)
    sd = math.sqrt((math.exp(SIGMA**2) - 1) * math.exp(2 * MU + SIGMA**2))
    expected = normal_power(shift, sd * math.sqrt(2 / n))
    a, b = lognormal_latencies(rng, POWER_SIMS, n), lognormal_latencies(rng, POWER_SIMS, n) + shift
    power = np.mean([detected(stats.mean_diff_ci(a[i], b[i], ALPHA)) for i in range(POWER_SIMS)])
    assert 0.4 < expected < 0.9
    print(f"power {power:.3f}, expected {expected:.3f}")
    assert abs(power - expected) <= POWER_TOL, (power, expected)
    # and the verdict has the right direction: the treatment is slower
    assert stats.verdict_from_interval(stats.mean_diff_ci(a[0], b[0] + 0.01), higher_is_better=False) == stats.WORSE


def test_power_p99_latency():
    rng = np.random.default_rng(7)
    n, q, shift = 2000, 0.99, 0.004  # +4 ms on a ~32 ms p99
    xi = math.exp(MU + SIGMA * sps.norm.ppf(q))
    density = sps.norm.pdf(sps.norm.ppf(q)) / (xi * SIGMA)
    se = math.sqrt(2 * q * (1 - q) / n) / density  # asymptotic SE of a difference of two sample quantiles
    expected = normal_power(shift, se)
    a, b = lognormal_latencies(rng, POWER_SIMS, n), lognormal_latencies(rng, POWER_SIMS, n) + shift
    power = np.mean([detected(stats.quantile_diff_ci(a[i], b[i], q, ALPHA)) for i in range(POWER_SIMS)])
    assert 0.4 < expected < 0.9
    print(f"power {power:.3f}, expected {expected:.3f}")
    assert abs(power - expected) <= POWER_TOL, (power, expected)


def test_power_accuracy():
    rng = np.random.default_rng(8)
    n, pa, pb = 1000, 0.80, 0.84
    expected = normal_power(pb - pa, math.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / n))
    ka, kb = rng.binomial(n, pa, POWER_SIMS), rng.binomial(n, pb, POWER_SIMS)
    cis = [stats.proportion_diff_ci(int(ka[i]), n, int(kb[i]), n, ALPHA) for i in range(POWER_SIMS)]
    power = np.mean([detected(c) for c in cis])
    assert 0.4 < expected < 0.9
    print(f"power {power:.3f}, expected {expected:.3f}")
    assert abs(power - expected) <= POWER_TOL, (power, expected)
    assert all(stats.verdict_from_interval(c, higher_is_better=True) != stats.WORSE for c in cis[:50])


def test_power_label_distribution():
    rng = np.random.default_rng(9)
    n, pa, pb = 500, np.array([0.5, 0.5]), np.array([0.42, 0.58])
    # noncentral chi-square power with Cohen's w over the pooled table
    pooled = (pa + pb) / 2
    w2 = sum(((p - pooled) ** 2 / pooled).sum() for p in (pa, pb)) / 2
    crit = sps.chi2.ppf(1 - ALPHA, df=1)
    expected = float(sps.ncx2.sf(crit, df=1, nc=2 * n * w2))
    ca, cb = rng.multinomial(n, pa, size=POWER_SIMS), rng.multinomial(n, pb, size=POWER_SIMS)
    power = np.mean([stats.label_chi_square({"n": ca[i, 0], "p": ca[i, 1]}, {"n": cb[i, 0], "p": cb[i, 1]}).p_value < ALPHA
                     for i in range(POWER_SIMS)])
    assert 0.4 < expected < 0.95
    print(f"power {power:.3f}, expected {expected:.3f}")
    assert abs(power - expected) <= POWER_TOL, (power, expected)


# -- small exact values --------------------------------------------------------------------------------

def test_wilson_and_newcombe_known_values():
    # Newcombe (1998), example (a): 56/70 vs 48/80 -> difference 0.2 [0.0524, 0.3339]
    ci = stats.proportion_diff_ci(48, 80, 56, 70)
    assert ci.estimate == pytest.approx(0.2)
    assert (ci.low, ci.high) == pytest.approx((0.0524, 0.3339), abs=5e-4)
    w = stats.wilson_ci(0, 10)
    assert w.low == 0 and w.high == pytest.approx(0.2775, abs=5e-4)


def test_chi_square_degenerate_tables_are_not_significant():
    assert stats.label_chi_square({"a": 10}, {"a": 12}).p_value == 1.0
    assert stats.label_chi_square({}, {"a": 3, "b": 4}).p_value == 1.0


# -- the report --------------------------------------------------------------------------------------------

def record(rng: np.random.Generator, n: int, scale: float, labels: Counter, correct: int, total: int) -> ArmRecord:
    return ArmRecord(latency=rng.lognormal(MU, SIGMA, n) * scale, requests=n, labels=labels,
                     feedback_correct=correct, feedback_total=total)


def test_report_verdicts_and_markdown():
    rng = np.random.default_rng(10)
    exp = Experiment("ab", (Arm("control", "m", "1", 50), Arm("treatment", "m", "2", 50)))
    snap = {"arms": {"control": record(rng, 3000, 1.0, Counter(pos=1500, neg=1500), 800, 1000),
                     "treatment": record(rng, 3000, 0.5, Counter(pos=1800, neg=1200), 700, 1000)},
            "shadow": {"shadow": ArmRecord(latency=rng.lognormal(MU, SIGMA, 100), requests=100, shadow_agree=90,
                                           shadow_compared=100)}}
    r = build_report(exp, snap, alpha=0.05, resamples=300, rng=rng)
    c = r["comparisons"]["treatment"]
    assert c["latency_p99_diff_ms"]["verdict"] == stats.BETTER  # half the latency
    assert c["latency_mean_diff_ms"]["verdict"] == stats.BETTER
    assert c["label_distribution"]["verdict"] == stats.DIFFERENT
    assert c["accuracy_diff"]["verdict"] == stats.WORSE  # 0.70 vs 0.80
    p50 = r["arms"]["control"]["latency_ms"]["p50"]
    assert p50["low"] <= p50["estimate"] <= p50["high"]
    assert abs(p50["estimate"] - 10.0) < 0.6  # the true median is 10 ms
    assert r["shadow"]["shadow"]["agreement"]["estimate"] == pytest.approx(0.9)
    md = render_markdown(r)
    assert "p99 latency: **better**" in md and "accuracy: **worse**" in md and "| shadow | 100 |" in md


def test_report_with_too_little_data_says_so():
    exp = Experiment("ab", (Arm("control", "m", "1", 50), Arm("treatment", "m", "2", 50)))
    r = build_report(exp, {"arms": {}, "shadow": {}}, resamples=100)
    c = r["comparisons"]["treatment"]
    assert c["latency_p99_diff_ms"]["verdict"] == "not enough data"
    assert c["accuracy_diff"]["verdict"] == "no feedback"
    assert "not enough data" in render_markdown(r)
