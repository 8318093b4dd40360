"""``python -m export.bench`` on the tiny run: every backend and the served model code measured in alternating
phases, the figures in the bench harness's schema, one report folder per run."""

from __future__ import annotations

import json

from export import bench


def test_backends_are_compared_with_torch(tiny_onnx_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert bench.main(["--run", str(tiny_onnx_dir.parent), "--tokens", "16", "--iterations", "8", "--warmup", "1",
                       "--phases", "2", "--threads", "1", "--batch-sizes", "1,4", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    backends = {"torch eager fp32", "onnxruntime fp32", "onnxruntime int8", "onnxruntime int8-static"}
    assert {(r["backend"], r["batch_size"]) for r in report["results"]} == {(b, n) for b in backends for n in (1, 4)}
    for row in report["results"]:
        assert row["n"] == 8 and 0 < row["p50_ms"] <= row["p99_ms"], row
        if row["backend"] == "torch eager fp32":
            assert row["speedup_vs_torch"] == 1.0 and "diff_p50_ms" not in row
        else:
            assert row["diff_p50_ms"]["vs"] == "torch eager fp32"
    assert sorted(p.name for p in out.glob("*.png")) == ["latency_cdf_batch_1.png", "latency_cdf_batch_4.png"]
    assert "| onnxruntime int8 | 4 |" in capsys.readouterr().out


def test_served_path_per_item_time_by_mode(tiny_onnx_dir, tmp_path):
    out = tmp_path / "served"
    assert bench.main(["--run", str(tiny_onnx_dir.parent), "--served-path", "--texts", "32", "--warmup", "4",
                       "--phases", "2", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["unit"] == "milliseconds per item" and report["texts"] == 32
    modes = {r["mode"]: r for r in report["results"] if r["variant"] == "fp32"}
    assert set(modes) == set(bench.SERVED_MODES)
    assert modes["batch 1"]["n"] == 32 and modes["batch 16, length buckets"]["n"] == 2  # one figure per batch
    assert modes["batch 1"]["per_item_vs_batch1"] == 1.0
    assert all(r["items_per_s"] > 0 for r in report["results"])
