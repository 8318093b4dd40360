"""The real bundled MiniLM through train (a few steps) -> merge -> export -> parity -> gate."""

from __future__ import annotations

import json

import pytest

from export.config import ExportConfig
from export.pipeline import run_export
from training.config import TrainConfig
from training.train import train
from tunestack import names


@pytest.mark.slow
def test_minilm_train_merge_export_parity(tmp_path):
    cfg = TrainConfig(name="minilm", runs_dir=tmp_path, max_examples=1200, max_steps=40, eval_every=20, threads=2)
    result = train(cfg)
    metrics = result.metrics
    assert metrics["trainable_parameters"] == 74_498  # LoRA r=8 on query/value + the 2-label head
    assert metrics["splits"]["test"] == 120

    export = run_export(ExportConfig(adapter=result.adapter_dir, runs_dir=tmp_path, publish=False))
    parity = json.loads((export.onnx_dir / names.PARITY_FILE).read_text())
    fp32, int8 = parity["variants"]["fp32"], parity["variants"]["int8"]
    assert parity["examples"] == 120
    assert fp32["publishable"] and fp32["label_agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4
    # the torch reference in parity.json is the same model training evaluated at the end
    assert parity["torch"]["accuracy"] == pytest.approx(metrics["test_after"]["accuracy"])
    drop = 100 * (fp32["accuracy"] - int8["accuracy"])
    assert int8["publishable"] == (drop <= 1.0)
    assert 1e-4 < int8["max_abs_diff"] < 1.0 and int8["label_agreement"] >= 0.9
