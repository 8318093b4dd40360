"""The export stage writes each variant's drift reference from the parity outputs; publish copies it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from transformers import AutoTokenizer

from experiments.drift.monitor import Reference
from export.config import ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.drift_reference import reference_path
from export.parity import onnx_logits
from export.publish import publish
from training.data import read_jsonl


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_reference_holds_the_variants_own_predictions_on_the_heldout_texts(tiny_onnx_dir, variant):
    ref = Reference.read(reference_path(tiny_onnx_dir, variant))
    parity = json.loads((tiny_onnx_dir / CONTRACT.parity_file).read_text())
    texts = [ex.text for ex in read_jsonl(Path(parity["heldout"]))][: parity["examples"]]
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir)
    session = ort.InferenceSession(str(tiny_onnx_dir / VARIANT_FILES[variant]), providers=["CPUExecutionProvider"])
    logits = onnx_logits(session, tokenizer, texts, parity["max_length"], 32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert len(ref.text_length) == len(ref.confidence) == len(texts) == parity["examples"]
    np.testing.assert_allclose(ref.confidence, probs.max(-1), atol=1e-5)
    top = probs.argmax(-1)
    shares = {label: float((top == i).mean()) for i, label in enumerate(parity["labels"]) if (top == i).any()}
    assert ref.label_shares == pytest.approx(shares)
    assert ref.text_length[0] == len(tokenizer(texts[0], add_special_tokens=False)["input_ids"])


def test_each_published_version_carries_its_variants_reference(tiny_onnx_dir, tmp_path):
    cfg = ExportConfig(repository=tmp_path / "model_repository", max_batch_size=8)
    for variant in ("fp32", "int8"):
        version_dir = publish(tiny_onnx_dir, variant, cfg)
        served = version_dir / CONTRACT.drift_reference_file
        assert served.read_bytes() == reference_path(tiny_onnx_dir, variant).read_bytes()
