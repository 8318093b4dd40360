"""``python -m workflows bench`` end to end on the tiny run: Triton (the run's int8 published into a temporary
repository) and the FastAPI + ORT peer under the same Locust load, the options interleaved level by level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_bench_measures_the_options_interleaved(tiny_onnx_dir, tmp_path):
    run = tiny_onnx_dir.parent
    argv = [sys.executable, "-m", "workflows", "bench", "--run", str(run), "--repository", str(tmp_path / "none"),
            "--options", "triton,fastapi-ort", "--no-in-process", "--threads", "1", "--rate", "10",
            "--rate-time", "3s", "--users", "1,2", "--level-time", "3s", "--out-dir", str(tmp_path / "reports")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    [folder] = (tmp_path / "reports").glob("bench-*")
    served = json.loads((folder / "bench.json").read_text())["served"]
    assert set(served) == {"triton", "fastapi-ort"}
    for option, result in served.items():
        assert result["fixed_rate"]["p50_ms"] > 0 and result["fixed_rate"]["server_cpu_percent"] is not None, option
        assert [lv["users"] for lv in result["levels"]] == [1, 2], option
        assert all(lv["throughput_rps"] > 0 and lv["error_rate"] == 0 for lv in result["levels"]), option
    # interleaved: both fixed-rate runs, then 1 user for each option, then 2 users for each
    windows = sorted([(r["fixed_rate"]["window"][0], "fixed", o) for o, r in served.items()]
                     + [(lv["window"][0], lv["users"], o) for o, r in served.items() for lv in r["levels"]])
    assert [(step, option) for _, step, option in windows] == [
        ("fixed", "triton"), ("fixed", "fastapi-ort"), (1, "triton"), (1, "fastapi-ort"), (2, "triton"), (2, "fastapi-ort")]
