"""``python -m serving.handler_bench``: the router app's infer path timed in process, this tree and another."""

from __future__ import annotations

import json

import pytest
import uvloop

from serving import handler_bench, handler_timing


def test_measure_times_answered_requests_only():
    result = uvloop.run(handler_bench.measure(40, 0.0, warmup=5))
    assert result["n"] == 40 and result["gap_ms"] == 0
    assert 0 < result["p50_ms"] and 0 < result["mean_ms"]


def test_a_router_that_does_not_answer_200_fails_the_bench(monkeypatch):
    async def failing(self, method, path, body=b"", headers=None, timeout=None):
        return (200, {}, self.metadata) if method == "GET" else (500, {}, b'{"error": "boom"}')

    monkeypatch.setattr(handler_timing.CannedPool, "request", failing)  # Triton fails: the router answers 503
    with pytest.raises(RuntimeError, match="not 200 with an arm"):
        uvloop.run(handler_bench.measure(5, 0.0, warmup=0))


def test_compare_tree_runs_each_tree_in_its_own_process(tmp_path):
    out = tmp_path / "handler"
    assert handler_bench.main(["--requests", "20", "--rounds", "2", "--gap-ms", "1", "--compare-tree",
                               str(handler_bench.ROOT), "--out", str(out)]) == 0
    trees = json.loads((out / "bench.json").read_text())["trees"]
    assert list(trees) == [str(handler_bench.ROOT)]  # the same tree twice is one entry, measured each round
    (cells,) = trees.values()
    assert [c["gap_ms"] for c in cells] == [0, 1] and all(len(c["rounds_p50_ms"]) == 4 for c in cells)
    assert all(c["n"] == 80 and 0 < c["p50_ms"] <= c["p99_ms"] for c in cells)  # 20 requests x 4 rounds


def test_a_tree_without_the_router_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="handler bench in"):
        handler_bench.run_tree(tmp_path, 5, [0.0])
