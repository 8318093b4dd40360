"""Convert a merged causal LM to ONNX with its KV cache (Optimum), and quantize it to int8 (dynamic).

``runs/NAME/merged -> runs/NAME/onnx/``: ``model.onnx`` (fp32; Optimum's ``text-generation-with-past``
export, the one graph that serves prefill with an empty cache and each decode step with a full one),
``model.int8.onnx`` (``int8_scheme``, below), ``generation.json`` (``export.generate.GenerationSettings``), the tokenizer files and the
training run's carried files. No transformer-optimizer fusion: ONNX Runtime's fusions target BERT/GPT-2
graphs, not this Llama export. Safe to run twice: the same merged weights and settings are not redone.

int8 schemes (``ExportConfig.int8_scheme``):

- ``weight-only`` (default): ONNX Runtime's ``MatMulNBitsQuantizer`` at 8 bits, symmetric, blocks of 32
  input channels: every MatMul with a constant weight becomes a ``MatMulNBits`` with int8 weights,
  computing in int8 (``accuracy_level`` 4: activations quantized per block, not per tensor); the
  attention and rotary-embedding MatMuls and the tied LM head (a transposed embedding) stay fp32.
- ``dynamic``: ``quantize_dynamic`` as for the classifier (int8 weights, activations quantized per call,
  also the attention and rotary-embedding MatMuls). The int8 gate refuses it on SmolLM2
  (docs/generative.md: ROUGE-L 36 points lower, perplexity doubled); kept to show that refusal.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
from optimum.exporters.onnx import main_export
from transformers import AutoConfig, GenerationConfig

from export.config import ExportConfig
from export.contract import GENERATIVE, GENERATIVE_VARIANT_FILES
from export.errors import InputError
from export.generate import GenerationSettings
from export.merge import copy_carried
from export.quantize import quantize_int8_dynamic
from tunestack.files import atomic_folder, sha256

log = logging.getLogger(__name__)

SOURCE_FILE = "export_source.json"
TASK = "text-generation-with-past"
"""Optimum's task name for a decoder exported with its past key/values as inputs and outputs."""


def generation_settings(merged_dir: Path) -> GenerationSettings:
    """EOS ids, pad id and context length from the merged model's config and generation config."""
    config = AutoConfig.from_pretrained(merged_dir)
    eos = config.eos_token_id
    if (merged_dir / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(merged_dir).eos_token_id or eos
    eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (eos,) if eos is not None else ()
    if not eos_ids:
        raise InputError(f"{merged_dir} names no eos_token_id (config.json or generation_config.json): "
                         "the decode loop could only stop on max_tokens")
    pad = config.pad_token_id if config.pad_token_id is not None else eos_ids[0]
    return GenerationSettings(tuple(int(i) for i in eos_ids), int(pad), int(config.max_position_embeddings))


WEIGHT_ONLY_BLOCK = 32
"""Input channels sharing one int8 scale in the weight-only scheme."""
WEIGHT_ONLY_ACCURACY_LEVEL = 4
"""``MatMulNBits`` compute type: 4 multiplies in int8 (activations quantized per block at run time); the
default (0: dequantize the weights to fp32 on every call) measured 15x slower than fp32 per decode step here."""


def quantize_weight_only_int8(src: Path, dst: Path) -> None:
    """int8 weights of every MatMul with a constant weight (``MatMulNBits``), activations left in fp32."""
    log.info("quantizing to int8 (weight-only MatMulNBits, blocks of %d)", WEIGHT_ONLY_BLOCK)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=DefaultWeightOnlyQuantConfig(
        block_size=WEIGHT_ONLY_BLOCK, is_symmetric=True, bits=8, accuracy_level=WEIGHT_ONLY_ACCURACY_LEVEL))
    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = chatty.level
    chatty.setLevel(logging.WARNING)  # it logs three lines per MatMul
    try:
        quantizer.process()
    finally:
        chatty.setLevel(level)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def _source(merged_dir: Path, cfg: ExportConfig) -> dict:
    return {"merged_sha256": sha256(merged_dir / "model.safetensors"), "task": TASK, "opset": cfg.opset,
            "int8_scheme": cfg.int8_scheme, "int8_per_channel": cfg.int8_per_channel,
            "weight_only": {"block": WEIGHT_ONLY_BLOCK, "accuracy_level": WEIGHT_ONLY_ACCURACY_LEVEL}}


def export_causal_onnx(merged_dir: Path, onnx_dir: Path, cfg: ExportConfig) -> Path:
    """Write the fp32 decoder, the requested int8 variant and ``generation.json`` into ``onnx_dir``."""
    if not (merged_dir / "model.safetensors").is_file():
        raise InputError(f"merged dir {merged_dir} has no model.safetensors; run the merge step first")
    source = _source(merged_dir, cfg)
    marker = onnx_dir / SOURCE_FILE
    wanted = [GENERATIVE_VARIANT_FILES[v] for v in ("fp32", *cfg.variants)]
    if marker.is_file() and json.loads(marker.read_text()) == source and all((onnx_dir / f).is_file() for f in wanted):
        log.info("already exported: %s", onnx_dir)
        return onnx_dir
    settings = generation_settings(merged_dir)
    with atomic_folder(onnx_dir) as tmp:
        log.info("exporting %s to ONNX with its KV cache (Optimum %s)", merged_dir, TASK)
        main_export(str(merged_dir), output=tmp, task=TASK, opset=cfg.opset, do_validation=False,
                    library_name="transformers")  # the parity gate on held-out prompts replaces Optimum's check
        if "int8" in cfg.variants and cfg.int8_scheme == "dynamic":
            quantize_int8_dynamic(tmp / GENERATIVE.onnx_file, tmp / GENERATIVE.onnx_int8_file, cfg.int8_per_channel)
        elif "int8" in cfg.variants:
            quantize_weight_only_int8(tmp / GENERATIVE.onnx_file, tmp / GENERATIVE.onnx_int8_file)
        for name in GENERATIVE.tokenizer_files:
            if (merged_dir / name).is_file():
                shutil.copy2(merged_dir / name, tmp / name)
        (tmp / GENERATIVE.generation_file).write_text(json.dumps(settings.to_dict(), indent=2))
        copy_carried(merged_dir, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return onnx_dir
