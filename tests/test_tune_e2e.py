"""``python -m serving tune`` end to end on the tiny model: a real tritonserver, real Locust, a real publish."""

from __future__ import annotations

import json

import pytest

from export import triton_config
from export.config import ExportConfig
from export.publish import publish
from serving.__main__ import main as serving_main


@pytest.mark.e2e
def test_tune_publishes_the_winner_as_a_new_version_with_its_report(tiny_onnx_dir, tmp_path):
    repository = tmp_path / "repository"
    publish(tiny_onnx_dir, "fp32", ExportConfig(repository=repository, model_name="sentiment", max_batch_size=8,
                                                instance_count=1, intra_op_threads=1, max_queue_delay_us=2000))
    v1 = repository / "sentiment" / "1"
    v1_files = {p.name: p.read_bytes() for p in v1.iterdir() if p.is_file()}
    code = serving_main(["tune", "--repository", str(repository), "--model", "sentiment", "--instance-counts", "1,2",
                         "--threads", "1", "--queue-delays-us", "off,2000", "--spinning", "off,on", "--max-batch-sizes", "8",
                         "--max-trials", "2", "--users", "2", "--steps", "2", "--step-time-s", "2",
                         "--p99-bound-ms", "5000", "--out-dir", str(tmp_path / "reports")])
    assert code == 0
    [folder] = (tmp_path / "reports").glob("tune-*")
    data = json.loads((folder / "tune.json").read_text())
    assert (folder / "tune.md").read_text().startswith("# Tuning: sentiment v1")
    assert (folder / "curves.png").stat().st_size > 1000
    assert len(data["trials"]) == 2 and data["settings"]["tuned_version"] == 1
    assert all(t["levels"] and t["levels"][-1]["n"] > 0 for t in data["trials"]), data["trials"]
    # the tiny model answers in milliseconds: the ramp's P99 is far below the 5 s bound, every trial counts
    assert all(t["score"] is not None and t["score"] > 0 for t in data["trials"])
    best = data["best"]
    assert data["best_score"] == max(t["score"] for t in data["trials"])
    assert data["published_version"] == "2"

    config = triton_config.parse_pbtxt((repository / "sentiment" / "config.pbtxt").read_text())
    assert config.instance_group[0].count == best["instance_count"]
    assert config.parameters["intra_op_threads"].string_value == str(best["intra_op_threads"])
    assert config.parameters["intra_op_spinning"].string_value == str(int(best["intra_op_spinning"]))
    assert config.HasField("dynamic_batching") == (best["max_queue_delay_us"] >= 0)
    if best["max_queue_delay_us"] >= 0:
        assert config.dynamic_batching.max_queue_delay_microseconds == best["max_queue_delay_us"]
    assert config.max_batch_size == best["max_batch_size"] == 8
    provenance = json.loads((repository / "sentiment" / "2" / "provenance.json").read_text())
    assert provenance["export_config"]["extra"]["tuned_from_version"] == 1
    assert provenance["export_config"]["instance_count"] == best["instance_count"]
    assert {p.name: p.read_bytes() for p in v1.iterdir() if p.is_file()} == v1_files  # never edited in place


def test_tune_refuses_a_missing_version(tiny_onnx_dir, tmp_path):
    repository = tmp_path / "repository"
    publish(tiny_onnx_dir, "fp32", ExportConfig(repository=repository, model_name="sentiment"))
    with pytest.raises(SystemExit, match="has no version 7"):
        serving_main(["tune", "--repository", str(repository), "--version", "7"])
    assert sorted(p.name for p in (repository / "sentiment").iterdir()) == ["1", "config.pbtxt"]


def test_tune_cli_rejects_bad_values_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        serving_main(["tune", "--objective", "min-p99", "--rate", "0", "--search", "exhaustive"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "needs a rate > 0" in err and "unknown search 'exhaustive'" in err
