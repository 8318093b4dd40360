"""``python -m workflows compare`` end to end on the tiny random BERT, and the headline arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.errors import ConfigError
from workflows.compare.compare_report import headline
from workflows.compare.run import CompareConfig

ROW_KEYS = {"method", "accuracy", "macro_f1", "auc", "trainable_params", "train_seconds", "peak_rss_mb", "export_parity",
            "served_p50_ms", "served_p99_ms", "inprocess_p50_ms"}


@pytest.mark.e2e
def test_compare_trains_exports_and_times_every_method(tmp_path, tiny_model_dir):
    argv = [sys.executable, "-m", "workflows", "compare", "--model", str(tiny_model_dir), "--max-examples", "200",
            "--max-steps", "2", "--eval-every", "2", "--max-length", "32", "--freeze-layers", "1", "--variants", "fp32",
            "--latency-requests", "10", "--time-budget-s", "60", "--runs-dir", str(tmp_path / "runs"),
            "--reports-dir", str(tmp_path / "reports")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "reports").glob("compare-*")
    report = json.loads((folder / "compare.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["full", "freeze", "lora", "ia3", "loha"]
    for method, row in rows.items():
        assert ROW_KEYS <= set(row), method
        assert row["export_parity"] == "pass" and row["parity"]["fp32"]["label_agreement"] == 1.0, method
        assert 0 < row["served_p50_ms"] <= row["served_p99_ms"] and row["inprocess_p50_ms"] > 0, method
        assert row["peak_rss_mb"] > 0 and row["steps"] == 2
    # the served figures came through a real tritonserver that loaded every method as its own model
    triton_log = (folder / "tritonserver.log").read_text()
    assert all(f"successfully loaded '{m}'" in triton_log for m in rows), triton_log[-2000:]
    assert report["served_latency"].startswith("through a real tritonserver")
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    assert rows["lora"]["trainable_params"] < rows["freeze"]["trainable_params"] < rows["full"]["trainable_params"]
    assert report["headline"]["params_percent"] == pytest.approx(
        100 * rows["lora"]["trainable_params"] / rows["full"]["trainable_params"])
    markdown = (folder / "compare.md").read_text()
    assert "| loha |" in markdown and "The headline claim" in markdown
    assert (folder / "compare.png").stat().st_size > 1000
    assert "report:" in done.stdout


def test_headline_fractions_and_verdicts():
    rows = [
        {"method": "full", "accuracy": 0.80, "trainable_params": 1000, "seconds_per_step": 1.0, "seconds_to_best": 100.0},
        {"method": "lora", "accuracy": 0.78, "trainable_params": 1, "seconds_per_step": 0.5, "seconds_to_best": 10.0},
    ]
    h = headline(rows)
    assert h["params_percent"] == pytest.approx(0.1) and h["accuracy_ratio"] == pytest.approx(0.975)
    assert h["time_saved_per_step"] == pytest.approx(0.5) and h["time_saved_to_best"] == pytest.approx(0.9)
    assert h["holds"] == {"params": True, "accuracy": True, "time_per_step": False, "time_to_best": True}
    assert headline(rows[1:]) is None
    rows[0]["majority_accuracy"] = 0.79  # full fine-tuning barely beats always answering the common label
    assert headline(rows)["holds"]["accuracy"] is None


def test_compare_config_refuses_bad_methods():
    with pytest.raises(ConfigError, match=r"unknown method 'qlora'.*\n.*method 'prefix_tuning' cannot be exported"):
        CompareConfig(methods=("lora", "qlora", "prefix_tuning"))
