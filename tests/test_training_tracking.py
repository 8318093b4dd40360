"""MLflow tracking into a store in a temporary folder: training and export runs, linked by provenance.json."""

from __future__ import annotations

import json

from export.config import ExportConfig
from export.pipeline import run_export
from tests.conftest import tiny_train_config
from training.train import train
from tunestack import tracking


def test_where_runs_go():
    assert tracking.resolve_uri(None, {"TUNESTACK_TRACKING": "off"}) is None
    assert tracking.resolve_uri("off", {"MLFLOW_TRACKING_URI": "http://x:5000"}) is None
    assert tracking.resolve_uri("sqlite:////t/db", {"TUNESTACK_TRACKING": "off"}) == "sqlite:////t/db"
    assert tracking.resolve_uri(None, {"MLFLOW_TRACKING_URI": "http://x:5000", "TUNESTACK_TRACKING": "off"}) == "http://x:5000"
    default = tracking.resolve_uri(None, {})
    assert default.startswith("sqlite:///") and default.endswith("mlruns/mlflow.db")


def test_off_in_tests_writes_nothing(tmp_path, tiny_model_dir):
    result = train(tiny_train_config(tmp_path, tiny_model_dir, max_steps=1, eval_every=1))
    assert result.run_id is None and not (result.adapter_dir / tracking.TRACKING_FILE).exists()


def test_training_and_export_runs_are_logged_and_linked(tmp_path, tiny_model_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    result = train(tiny_train_config(tmp_path, tiny_model_dir, method="ia3", max_steps=2, eval_every=1, tracking_uri=uri))
    assert result.run_id is not None
    link = json.loads((result.adapter_dir / tracking.TRACKING_FILE).read_text())
    assert link == {"run_id": result.run_id, "tracking_uri": uri, "experiment": tracking.EXPERIMENT}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # export reads where to log from the environment
    export = run_export(ExportConfig(adapter=result.adapter_dir, runs_dir=tmp_path, repository=tmp_path / "repo",
                                     variants=("fp32",)))
    assert export.passed
    provenance = json.loads((export.published["fp32"] / "provenance.json").read_text())
    assert provenance["method"] == "ia3" and provenance["training_run"]["run_id"] == result.run_id

    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["stage"] == "training" and run.data.params["method"] == "ia3"
    assert run.data.metrics["test_after.accuracy"] == result.metrics["test_after"]["accuracy"]
    assert [m.step for m in client.get_metric_history(result.run_id, "accuracy")] == [1, 2]
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    exports = client.search_runs([experiment.experiment_id], "tags.stage = 'export'")
    assert len(exports) == 1 and exports[0].data.tags["training_run_id"] == result.run_id
    assert exports[0].data.metrics["fp32.label_agreement"] == 1.0
    assert (tmp_path / "store" / "artifacts").is_dir()  # artifacts stay beside the store, not in the cwd


def test_a_broken_store_does_not_fail_the_caller(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    assert tracking.log_run("training", "x", metrics={"a": 1}, uri=f"sqlite:///{tmp_path / 'file' / 'db'}") is None
