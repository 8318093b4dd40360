"""The bench harness (``tunestack.bench``): the one summary schema with exact quantiles, the per-phase interval
(its coverage under drift, A/A rate and power, by simulation), phases run side by side, and the one writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import arm_intervals as report_stats
from tunestack.bench import (
    BenchOutput,
    BenchRun,
    blocked_quantile_diff_ci,
    compare,
    markdown_table,
    run_phases,
    split,
    summarize,
    time_each,
)

MU, SIGMA = math.log(0.010), 0.5  # latency ~ lognormal, median 10 ms


def detected(ci) -> bool:
    return ci.low > 0 or ci.high < 0


def test_summary_is_exact_order_statistics():
    x = np.arange(1, 101, dtype=float)  # 1 .. 100 ms
    assert summarize(x) == {"n": 100, "mean_ms": 50.5, "p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0}
    assert summarize([2.5, 0.5]) == {"n": 2, "mean_ms": 1.5, "p50_ms": 0.5, "p90_ms": 2.5, "p99_ms": 2.5}
    assert summarize([]) == {"n": 0, "mean_ms": None, "p50_ms": None, "p90_ms": None, "p99_ms": None}


def pooled_quantile_diff_ci(control: np.ndarray, treatment: np.ndarray, q: float, rng: np.random.Generator):
    """The percentile-bootstrap interval of the difference over the pooled samples: every sample independent."""
    reps = (report_stats.bootstrap_quantile(treatment, q, 1000, rng)
            - report_stats.bootstrap_quantile(control, q, 1000, rng))
    low, high = np.quantile(reps, [0.025, 0.975])
    return report_stats.Interval(float(np.median(reps)), float(low), float(high))


def drifting_phases(rng: np.random.Generator, phases: int, n: int, delta: float, drift: float, jitter: float):
    """A benchmark's alternating phases on a machine whose speed drifts: phase pair ``k`` shares a slow factor
    ``exp(N(0, drift))``, each phase adds its own ``exp(N(0, jitter))``; the treatment is ``delta`` s slower."""
    shared = rng.normal(0, drift, phases)
    control = [rng.lognormal(MU, SIGMA, n) * math.exp(s + rng.normal(0, jitter)) for s in shared]
    treatment = [rng.lognormal(MU, SIGMA, n) * math.exp(s + rng.normal(0, jitter)) + delta for s in shared]
    return control, treatment


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_blocked_interval_keeps_its_coverage_when_the_machine_drifts(q):
    """The benches' interval: ~95 % coverage of the true overhead with drift between phases, where the pooled
    interval (every request independent) covers it far less often at the median."""
    rng = np.random.default_rng(7)
    sims, delta = 300, 0.0005
    blocked = pooled = 0
    for _ in range(sims):
        control, treatment = drifting_phases(rng, 8, 250, delta, drift=0.15, jitter=0.08)
        b = blocked_quantile_diff_ci(control, treatment, q)
        p = pooled_quantile_diff_ci(np.concatenate(control), np.concatenate(treatment), q, rng)
        blocked += b.low <= delta <= b.high
        pooled += p.low <= delta <= p.high
    assert 0.91 <= blocked / sims <= 0.99, blocked / sims
    if q == 0.5:
        assert pooled / sims < 0.8, pooled / sims


def test_blocked_interval_power_and_aa_rate():
    rng = np.random.default_rng(8)
    sims = 300
    aa = sum(detected(blocked_quantile_diff_ci(*drifting_phases(rng, 8, 250, 0.0, 0.1, 0.05), 0.5))
             for _ in range(sims)) / sims
    found = sum(detected(blocked_quantile_diff_ci(*drifting_phases(rng, 8, 250, 0.002, 0.1, 0.05), 0.5))
                for _ in range(sims)) / sims
    assert aa <= 0.09 and found >= 0.9, (aa, found)
    with pytest.raises(ValueError, match="paired blocks"):
        blocked_quantile_diff_ci([np.ones(3)], [np.ones(3)], 0.5)


def test_compare_names_the_baseline_and_brackets_the_estimate():
    base = [np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0]), np.array([1.5, 2.5, 3.5])]
    slower = [b + d for b, d in zip(base, (1.0, 1.2, 0.8), strict=True)]
    diff = compare("direct", base, slower)
    assert set(diff) == {"diff_p50_ms", "diff_p99_ms"}
    assert diff["diff_p50_ms"]["vs"] == "direct" and diff["diff_p50_ms"]["estimate"] == pytest.approx(1.0)
    assert diff["diff_p50_ms"]["low"] < 1.0 < diff["diff_p50_ms"]["high"]


def test_phases_run_every_arm_side_by_side_and_drop_the_ones_not_kept():
    calls = []
    arms = {name: (lambda phase, name=name: calls.append((phase, name)) or phase) for name in ("a", "b", "c")}
    got = run_phases(arms, 3, warmup=lambda name: calls.append(("warm", name)), mirror=True,
                     keep=lambda name, result: not (name == "c" and result == 0))
    assert calls == [("warm", "a"), ("warm", "b"), ("warm", "c"), (0, "a"), (0, "b"), (0, "c"),
                     (1, "b"), (1, "a"), (2, "a"), (2, "b")]  # c left after phase 0; phase 1 runs backwards
    assert got == {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0]}
    with pytest.raises(ValueError, match="phases must be >= 1"):
        run_phases(arms, 0)


def test_split_and_time_each():
    assert split(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]
    assert sum(split(list(range(10)), 4), []) == list(range(10))
    times = time_each(lambda batch: sum(batch), [[1, 2], [3, 4, 5, 6]], per_item=len)
    assert times.shape == (2,) and (times >= 0).all()


def test_writer_puts_json_markdown_and_plots_in_one_folder(tmp_path):
    run = BenchRun("demo", "Demo bench", BenchOutput(out_dir=str(tmp_path)))
    assert run.folder.parent == tmp_path and run.folder.name.startswith("bench-demo-") and run.folder.is_dir()
    samples = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([2.0, 4.0])}
    rows = {name: summarize(x) for name, x in samples.items()}
    report = run.write({"rows": rows}, lambda doc: markdown_table(["arm", "p50 ms"], [
        (name, r["p50_ms"]) for name, r in doc["rows"].items()], "lr"), cdfs={"latency_cdf": samples})
    data = json.loads(report.json.read_text())
    assert data["bench"] == "demo" and data["config"] == {"out_dir": str(tmp_path), "out": None}
    assert data["rows"]["b"] == {"n": 2, "mean_ms": 3.0, "p50_ms": 2.0, "p90_ms": 4.0, "p99_ms": 4.0}
    assert set(data["machine"]) >= {"cpus", "load_average_at_start", "load_average_at_end"}
    text = report.markdown.read_text()
    assert text.startswith("# Demo bench\n") and "| b | 2.0 |" in text and "![latency cdf](latency_cdf.png)" in text
    assert [p.name for p in report.plots] == ["latency_cdf.png"] and report.plots[0].stat().st_size > 1000
    fixed = BenchRun("demo", "Demo bench", BenchOutput(out=str(tmp_path / "here")))
    assert fixed.folder == tmp_path / "here"
