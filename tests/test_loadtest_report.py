"""The load test report: real Locust CSV fixtures in, Markdown + PNG plots out, numbers checked against the CSV."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib.image
import pytest

from loadtests.loadtest_report import (
    build_report,
    cdf_from_histogram,
    cpu_summary,
    history_series,
    read_csv,
    saturation_warnings,
)

FIXTURES = Path(__file__).parent / "fixtures" / "locust"


def fixture_prefix(tmp_path: Path, name: str) -> Path:
    """A copy of a fixture folder (the report writes next to its input) and its --csv prefix."""
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    return folder / "locust"


def csv_rows(prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {r["Name"]: r for r in csv.DictReader(f)}


def markdown_row(report: str, *first_cells: str) -> list[str]:
    """The cells of the first Markdown table row that starts with ``first_cells``."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no table row {first_cells!r} in the report:\n{report}")


def test_variant_table_matches_the_csv(tmp_path):
    prefix = fixture_prefix(tmp_path, "router-closed-loop")
    report = build_report(prefix).read_text()
    rows = csv_rows(prefix)
    for variant in ("control", "treatment"):
        r = rows[variant]
        cells = markdown_row(report, variant)
        requests, failures = int(r["Request Count"]), int(r["Failure Count"])
        assert cells[1:4] == [str(requests), str(failures), f"{failures / requests:.2%}"]
        assert float(cells[4]) == pytest.approx(float(r["Requests/s"]), abs=0.05)
        # P50, P95, P99, max: Locust's values in ms
        assert [float(c) for c in cells[5:8]] == [float(r["50%"]), float(r["95%"]), float(r["99%"])]
        assert float(cells[8]) == pytest.approx(float(r["Max Response Time"]), abs=0.5)
    # feedback requests are not a variant: they get their own table, and "all" says it includes them
    assert "feedback" not in {line.split("|")[1].strip() for line in report.splitlines()
                              if line.startswith("| ") and "%" in line}
    assert markdown_row(report, "feedback")[1] == rows["feedback"]["Request Count"]
    all_row = markdown_row(report, "**all** (Locust's Aggregated, incl. other requests)")
    assert all_row[1] == rows["Aggregated"]["Request Count"]


def test_summary_json_and_plots(tmp_path):
    prefix = fixture_prefix(tmp_path, "router-closed-loop")
    build_report(prefix)
    summary = json.loads((prefix.parent / "summary.json").read_text())
    rows = csv_rows(prefix)
    assert set(summary["variants"]) == {"control", "treatment"}
    for name, s in summary["variants"].items():
        assert s["requests"] == int(rows[name]["Request Count"])
        assert s["p99_ms"] == float(rows[name]["99%"])
    for png in ("latency_cdf.png", "over_time.png"):
        image = matplotlib.image.imread(prefix.parent / png)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image.std() > 0.05  # not a blank canvas
    assert summary["plots"] == {"latency CDF per variant": "latency_cdf.png",
                                "throughput and P99 over time": "over_time.png"}


def test_triton_and_router_sections(tmp_path):
    prefix = fixture_prefix(tmp_path, "router-closed-loop")
    report = build_report(prefix).read_text()
    triton = json.loads((prefix.parent / "triton_metrics.json").read_text())
    assert {m["version"] for m in triton["models"]} == {"1", "2"}
    table = report.split("## Triton")[1]
    for m in triton["models"]:
        cells = markdown_row(table, m["model"], m["version"])
        assert cells[2:4] == [str(m["requests"]), str(m["failures"])]
        assert cells[5:7] == [f"{m['queue_ms']:.2f}", f"{m['compute_infer_ms']:.2f}"]
    # Triton counted exactly the requests Locust saw per arm (control = v1, treatment = v2)
    rows = csv_rows(prefix)
    by_version = {m["version"]: m["requests"] for m in triton["models"]}
    assert by_version == {"1": int(rows["control"]["Request Count"]), "2": int(rows["treatment"]["Request Count"])}
    # the router's own report is embedded, its headings moved under ours
    assert "### Experiment `sentiment-ab`" in report
    assert "| control |" in report.split("The router's statistical report")[1]


def test_cdf_agrees_with_the_csv_percentiles(tmp_path):
    prefix = fixture_prefix(tmp_path, "router-closed-loop")
    histograms = {e["name"]: e["response_times"] for e in json.loads(Path(f"{prefix}_stats.json").read_text())}
    rows = csv_rows(prefix)
    for variant in ("control", "treatment"):
        ms, fraction = cdf_from_histogram(histograms[variant])
        assert fraction[0] == 0.0 and fraction[-1] == pytest.approx(1.0)
        for column, q in (("50%", 0.5), ("95%", 0.95), ("99%", 0.99)):
            value = float(rows[variant][column])
            at = max(f for m, f in zip(ms, fraction, strict=True) if m <= value)
            below = max((f for m, f in zip(ms, fraction, strict=True) if m < value), default=0.0)
            assert at >= q > below, (variant, column, value, at, below)


def test_throughput_over_time_adds_up_to_the_request_count(tmp_path):
    prefix = fixture_prefix(tmp_path, "router-closed-loop")
    history = read_csv(Path(f"{prefix}_stats_history.csv"))
    t0 = min(float(r["Timestamp"]) for r in history)
    series, users = history_series(history, ["control", "treatment"], min_span=3.0)  # 2 workers: reports every 3 s
    for name, s in series.items():
        previous = [0.0] + s["t"][:-1]
        total = sum(rps * (t - p) for rps, t, p in zip(s["rps"], s["t"], previous, strict=True))
        counted = max(int(r["Total Request Count"]) for r in history
                      if r["Name"] == name and float(r["Timestamp"]) - t0 <= s["t"][-1])
        assert total == pytest.approx(counted, abs=1)
        assert all(t2 - t1 >= 3.0 for t1, t2 in zip(s["t"], s["t"][1:], strict=False))
    assert max(users[1]) == 6


def test_failures_and_dropped_arrivals(tmp_path):
    prefix = fixture_prefix(tmp_path, "triton-open-loop-saturated")
    report = build_report(prefix).read_text()
    rows = csv_rows(prefix)
    assert markdown_row(report, "sentiment v1")[1] == rows["sentiment v1"]["Request Count"]
    dropped = markdown_row(report, "infer")  # failures table: type, name, error, count
    assert dropped[1] == "(dropped)" and dropped[3] == rows["(dropped)"]["Failure Count"]
    agg = rows["Aggregated"]
    expected = int(agg["Failure Count"]) / int(agg["Request Count"])
    assert f"{expected:.2%}" in markdown_row(report, "**all** (Locust's Aggregated, incl. other requests)")


def test_saturation_warning_on_high_client_cpu(tmp_path):
    report = build_report(fixture_prefix(tmp_path, "triton-open-loop-saturated")).read_text()
    warnings = [line for line in report.splitlines() if line.startswith("> **Warning:**")]
    client = [w for w in warnings if "load generator was saturated" in w]
    assert len(client) == 1 and "`local`" in client[0] and "measure the client, not the server" in client[0]
    assert "in 75% of the samples" in client[0]  # 9 of the 12 local samples are >= 90 %
    assert report.index("> **Warning:**") < report.index("## Per variant")  # on top, before any figure


def test_no_client_saturation_warning_when_locust_was_idle(tmp_path):
    report = build_report(fixture_prefix(tmp_path, "router-closed-loop")).read_text()
    assert "load generator was saturated" not in report
    # the machine itself was busy (the server shares its 2 cores with the load generator): that is said
    assert "competed for the same cores" in report


@pytest.mark.parametrize(("high", "warned"), [(2, False), (3, True)])
def test_saturation_needs_a_share_of_the_samples(high, warned):
    samples = [{"role": "worker-1", "cpu_percent": "95"}] * high + [{"role": "worker-1", "cpu_percent": "40"}] * (10 - high)
    cpu = cpu_summary(samples, threshold=90)
    assert cpu["worker-1"]["share_saturated"] == pytest.approx(high / 10)
    assert bool(saturation_warnings(cpu, threshold=90, fraction=0.25)) is warned


def test_locust_own_cpu_warning_is_reported():
    log = "[2026-01-01 00:00:00,000] vm/WARNING/root: CPU usage above 90%! This may constrain your throughput"
    warnings = saturation_warnings({}, 90, 0.25, log)
    assert len(warnings) == 1 and "CPU usage above 90%" in warnings[0]
