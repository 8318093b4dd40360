"""Convert a merged causal LM to ONNX with its KV cache (Optimum), and quantize it to int8 (dynamic).

``runs/NAME/merged -> runs/NAME/onnx/``: ``model.onnx`` (fp32; Optimum's ``text-generation-with-past``
export, the one graph that serves prefill with an empty cache and each decode step with a full one),
``model.int8.onnx`` (``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantized
per call), ``generation.json`` (``export.generate.GenerationSettings``), the tokenizer files and the
training run's carried files. No transformer-optimizer fusion: ONNX Runtime's fusions target BERT/GPT-2
graphs, not this Llama export. Safe to run twice: the same merged weights and settings are not redone.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

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


def _source(merged_dir: Path, cfg: ExportConfig) -> dict:
    return {"merged_sha256": sha256(merged_dir / "model.safetensors"), "task": TASK, "opset": cfg.opset,
            "int8_per_channel": cfg.int8_per_channel}


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
        if "int8" in cfg.variants:
            quantize_int8_dynamic(tmp / GENERATIVE.onnx_file, tmp / GENERATIVE.onnx_int8_file, cfg.int8_per_channel)
        for name in GENERATIVE.tokenizer_files:
            if (merged_dir / name).is_file():
                shutil.copy2(merged_dir / name, tmp / name)
        (tmp / GENERATIVE.generation_file).write_text(json.dumps(settings.to_dict(), indent=2))
        copy_carried(merged_dir, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return onnx_dir
