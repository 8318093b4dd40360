"""End to end: ``python -m serving.llm_hop_bench`` on the tiny causal LM, a short run through the real tritonserver
and router. Checks what the report says (every path measured as often as asked, the differences computed against
direct with an interval, TTFT and ITL, the router's CPU read), never a timing's value."""

from __future__ import annotations

import json

import pytest

from serving.llm_hop_bench import CHAT, DIRECT, ROUTER, main

pytestmark = pytest.mark.e2e


def test_a_short_run_measures_both_paths_side_by_side(tiny_causal_onnx_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["--onnx-dir", str(tiny_causal_onnx_dir), "--requests", "8", "--phases", "2", "--warmup", "1",
                 "--max-tokens", "2", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = {r["path"]: r for r in report["rows"]}
    assert set(rows) == {DIRECT, ROUTER, CHAT}
    assert rows[DIRECT]["ttft"]["n"] == rows[ROUTER]["ttft"]["n"] == rows[CHAT]["ttft"]["n"] == 8
    assert all(r["itl"]["n"] == 8 * (2 - 1) for r in rows.values())  # a gap per token after the first
    itl = rows[ROUTER]["itl_diff"]["diff_p99_ms"]
    assert itl["vs"] == DIRECT and itl["low"] <= itl["estimate"] <= itl["high"]
    assert rows[CHAT]["diff"]["diff_p50_ms"]["vs"] == DIRECT
    diff = rows[ROUTER]["diff"]["diff_p50_ms"]
    assert diff["vs"] == DIRECT and diff["low"] <= diff["estimate"] <= diff["high"]
    assert "diff" not in rows[DIRECT] and rows[ROUTER]["router_cpu_ms_per_stream"] > 0
    assert (out / "ttft_cdf.png").is_file() and (out / "itl_cdf.png").is_file() and "| router | 8 |" in capsys.readouterr().out
