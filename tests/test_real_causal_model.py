"""The real bundled SmolLM2-135M-Instruct (GGUF) through train (a few steps) -> merge -> ONNX -> both gates.

Minutes on 2 cores: the GGUF is dequantised, 6 LoRA steps run, 4 prompts are scored, and the export's
gates run on them with the real 49k-token vocabulary and 30-layer cache.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from export.config import ExportConfig
from export.pipeline import run_export
from training.config import TrainConfig
from training.train import train


@pytest.mark.slow
def test_smollm2_train_merge_export_gates(tmp_path):
    cfg = TrainConfig(task="causal-lm", name="smol", runs_dir=tmp_path, max_examples=400, max_steps=6, eval_every=6,
                      eval_max_examples=8, generation_examples=4, max_new_tokens=16)
    result = train(cfg)
    base = tmp_path / "smol" / "base"
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    assert tokenizer.encode("Hello world").ids == [19556, 905]  # no BOS added
    assert json.loads((base / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"
    assert result.metrics["total_parameters"] == 134_975_808 and result.metrics["trainable_parameters"] == 460_800

    export = run_export(ExportConfig(adapter=result.adapter_dir, runs_dir=tmp_path, publish=False,
                                     generation_parity_prompts=4, quality_examples=4, generation_max_new_tokens=16))
    fp32, int8 = export.parity["variants"]["fp32"], export.parity["variants"]["int8"]
    assert all(p["tokens_equal"] and p["prompt_ids_equal"] for p in fp32["prompts"]), fp32["prompts"]
    assert fp32["publishable"] and fp32["max_abs_logit_diff"] < 1e-3
    assert fp32["perplexity"] == pytest.approx(result.metrics["test_after"]["perplexity"], rel=1e-3)
    assert int8["publishable"] == all(c["passed"] for c in int8["checks"])
    assert int8["perplexity"] != fp32["perplexity"]
