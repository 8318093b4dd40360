"""``make bench``'s exact figures without servers: the latency log, window stats, CPU windows, ratios and targets."""

from __future__ import annotations

import pytest

from loadtests.bench_report import ratios_and_targets, render
from loadtests.measure import LatencyLog, ProcessTreeCPU, read_latencies, window_stats


def test_latency_log_round_trip_and_exact_percentiles(tmp_path):
    log = LatencyLog(tmp_path / "locust_latency-1.csv")
    for i in range(100):  # 1.0 .. 100.0 ms, one request per 10 ms, every 10th failed
        log.record("infer", "sentiment v1", float(i + 1), exception=None if i % 10 else RuntimeError("x"),
                   start_time=1000.0 + i * 0.01)
    log.record("feedback", "feedback", 5.0, start_time=1000.0)  # not an inference: left out
    log.close()
    log.record("infer", "late", 1.0)  # after Locust quit: ignored, no error
    rows = read_latencies(tmp_path / "locust")
    assert len(rows) == 100 and rows[0].ms == 1.0 and not rows[0].ok and rows[1].ok
    stats = window_stats(rows)
    ok = [float(i + 1) for i in range(100) if i % 10]
    assert stats["n"] == 90 and stats["error_rate"] == pytest.approx(0.1)
    assert stats["p50_ms"] == sorted(ok)[44]  # the exact order statistic x_(45) of 90, not rounded to whole ms
    assert stats["p99_ms"] == sorted(ok)[89] and stats["mean_ms"] == pytest.approx(sum(ok) / 90)
    half = window_stats(rows, rows[50].end_s, rows[-1].end_s)  # [start, end): the last request is outside
    assert half["requests"] == 49


def test_cpu_percent_uses_the_samples_around_a_window():
    cpu = ProcessTreeCPU()
    cpu.samples = [(10.0, 1.0), (11.0, 1.5), (12.0, 2.5), (13.0, 2.5)]
    assert cpu.percent(11.0, 12.0) == pytest.approx(100.0)
    assert cpu.percent(10.5, 12.5) == pytest.approx(50.0)  # widened to the samples at 10 and 13 s
    assert ProcessTreeCPU().percent(0, 1) is None


def served(p50, cpu, tput):
    return {"fixed_rate": {"p50_ms": p50, "p99_ms": p50 * 2, "server_cpu_percent": cpu, "error_rate": 0.0,
                           "client_saturated": False, "machine_busy": False},
            "levels": [{"users": 4, "throughput_rps": tput, "p50_ms": p50, "p99_ms": 50.0, "error_rate": 0.0,
                        "client_saturated": False, "machine_busy": False}],
            "max_throughput": {"throughput_rps": tput, "users": 4, "p99_ms": 50.0, "bound_ms": 100.0}}


def test_ratios_and_targets():
    data = {"served": {"triton": served(5.0, 12.0, 400.0), "fastapi-ort": served(6.0, 70.0, 300.0),
                       "litserve": served(10.0, 85.0, 290.0)}, "in_process": {"best_items_per_s": 600.0, "best": "tokenizers + ORT, batch 1", "rows": [
        {"code": "tokenizers + ORT", "threads": 2, "batch_size": 1, "items_per_s": 600.0, "p50_ms": 1.6, "p99_ms": 2.0}]}}
    ratios, targets = ratios_and_targets(data)
    assert ratios["served_vs_inprocess_best"] == pytest.approx(400 / 600)
    assert ratios["vs_fastapi_ort"] == pytest.approx(400 / 300) and ratios["vs_litserve"] == pytest.approx(400 / 290)
    assert ratios["p50_vs_fastapi_ort"] == pytest.approx(5 / 6) and ratios["vs_router"] is None
    assert targets == {"served_vs_inprocess_best": False, "vs_fastapi_ort": True, "vs_litserve": True,
                       "p50_vs_fastapi_ort": True}
    data.update(config={"run": "runs/demo", "threads": 2, "litserve_max_batch_size": 16, "litserve_batch_timeout": 0.002,
                        "p99_bound_ms": 100.0, "rate": 20.0, "rate_time": "15s", "users": "4", "level_time": "10s"},
                ratios=ratios, targets=targets,
                triton={"version": 3, "variant": "int8", "settings": "2 inst x 1 thr"})
    text = render(data)
    assert "| FastAPI + ORT (batch 1, 2 threads) | 6.0 / 12.0 | 300 | 4 | 1.33 | 70 % | - |" in text
    assert "| served_vs_inprocess_best | 0.67 | >= 0.8 | no |" in text


def test_published_settings_of_a_tuned_version(tmp_path):
    import json

    from loadtests.bench import published_settings
    from serving.tune.search import OFF, Candidate

    def version(n, extra, **cfg):
        (tmp_path / str(n)).mkdir()
        export_config = {"instance_count": 1, "intra_op_threads": 2, "dynamic_batching": True,
                         "max_queue_delay_us": 500, "preferred_batch_sizes": [], "max_batch_size": 64, "extra": extra}
        (tmp_path / str(n) / "provenance.json").write_text(json.dumps({"export_config": {**export_config, **cfg}}))

    version(1, {}, dynamic_batching=False)
    version(2, {"tuned_from_version": 1}, instance_count=2)
    assert published_settings(tmp_path, 2) == (1, Candidate(1, 2, OFF, (), 64))
    assert published_settings(tmp_path, 1) is None  # not made by make tune


def test_paused_stops_a_process_tree_and_resumes_it_even_after_an_error():
    import subprocess
    import sys

    import psutil

    from loadtests.bench import paused
    from tunestack.procs import wait_for

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"])
    try:
        root = psutil.Process(parent.pid)
        wait_for(lambda: len(root.children()) == 1, 30, "the child process")
        tree = [root, *root.children()]
        def stopped() -> set[bool]:
            return {p.status() == psutil.STATUS_STOPPED for p in tree}

        with pytest.raises(RuntimeError), paused([parent.pid]):
            wait_for(lambda: stopped() == {True}, 30, "both processes stopped")  # SIGSTOP lands asynchronously
            raise RuntimeError("a failed measurement")
        wait_for(lambda: stopped() == {False}, 30, "both processes running again")
        with paused([parent.pid, 2**22 + 7]):  # a pid that is gone is skipped
            wait_for(lambda: stopped() == {True}, 30, "both processes stopped")
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()
