"""Every training method on the tiny random BERT: trains, merges, exports through the parity gate."""

from __future__ import annotations

import json

import pytest

from export.config import ExportConfig
from export.merge import merge
from export.pipeline import run_export
from tests.conftest import tiny_train_config
from training.methods import METHODS
from training.train import train


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_merges_and_passes_the_gate(tmp_path, tiny_model_dir, method):
    cfg = tiny_train_config(tmp_path, tiny_model_dir, name=method, method=method, freeze_layers=1, max_steps=4,
                            eval_every=2)
    result = train(cfg)
    names = {p.name for p in result.adapter_dir.iterdir()}
    if METHODS[method].peft:
        assert "adapter_config.json" in names and "config.json" not in names
    else:
        assert {"config.json", "model.safetensors"} <= names
    metrics = result.metrics
    assert metrics["method"] == method and metrics["steps"] == 4
    trainable, total = metrics["trainable_parameters"], metrics["total_parameters"]
    assert 0 < trainable <= total
    if method == "full":
        assert trainable == total
    if method == "freeze":  # the embeddings (most of a tiny BERT) and layer 0 are frozen
        assert trainable < total // 2
    export = run_export(ExportConfig(adapter=result.adapter_dir, runs_dir=tmp_path, publish=False,
                                     variants=("fp32",)))
    assert export.passed, export.parity
    fp32 = export.parity["variants"]["fp32"]
    assert fp32["label_agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4
    merged = json.loads((export.merged_dir / "merge_source.json").read_text())
    assert merged["method"] == method
    assert merge(result.adapter_dir, export.merged_dir) == export.merged_dir  # second run: "already merged"


def test_freeze_keeps_the_bottom_layers_and_embeddings(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    cfg = tiny_train_config(tmp_path, tiny_model_dir, method="freeze", freeze_layers=1, max_steps=3, eval_every=3,
                            learning_rate=1e-2)
    result = train(cfg)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).state_dict()
    tuned = load_file(result.adapter_dir / "model.safetensors")
    same = {k for k in tuned if k in base and tuned[k].shape == base[k].shape and bool((tuned[k] == base[k]).all())}
    assert "bert.embeddings.word_embeddings.weight" in same
    assert "bert.encoder.layer.0.attention.self.query.weight" in same
    assert "bert.encoder.layer.1.attention.self.query.weight" not in same
