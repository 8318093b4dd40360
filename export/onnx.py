"""Convert the merged model to ONNX with Optimum, fuse it, and quantize it to int8 (dynamic and static).

``runs/NAME/onnx/``: ``model.unfused.onnx`` (Optimum's export), ``model.onnx`` (fp32, fused by ONNX
Runtime's transformer optimizer unless ``--no-optimize``), ``model.int8.onnx`` (dynamic) and
``model.int8-static.onnx`` (calibrated QDQ), both quantized from ``model.onnx``. See ``export.quantize``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnx
from optimum.exporters.onnx import main_export

from export.config import ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.errors import InputError
from export.merge import copy_carried
from export.quantize import (
    FLOAT_CONSUMERS,
    STATIC_OP_TYPES,
    TextCalibrationReader,
    optimize_graph,
    quantize_int8_dynamic,
    quantize_int8_static,
    training_texts,
)
from tunestack import names
from tunestack.files import atomic_folder, sha256

log = logging.getLogger(__name__)

SOURCE_FILE = "export_source.json"
UNFUSED_FILE = "model.unfused.onnx"
"""Optimum's export before the transformer optimizer (kept for comparison: ``export.bench``)."""


def _source(merged_dir: Path, cfg: ExportConfig) -> dict:
    """What the ONNX files depend on: a change re-exports (a newly requested variant does too)."""
    return {
        "merged_dir": str(merged_dir.resolve()),
        "merged_sha256": sha256(merged_dir / "model.safetensors"),
        "opset": cfg.opset,
        "optimize": cfg.optimize,
        "int8_per_channel": cfg.int8_per_channel,
        "static_recipe": {"ops": list(STATIC_OP_TYPES), "fp32_before": list(FLOAT_CONSUMERS)},
        "calibration": {"data": sha256(cfg.calibration_data) if cfg.calibration_data and cfg.calibration_data.is_file()
                        else cfg.calibration_data and str(cfg.calibration_data),
                        "examples": cfg.calibration_examples, "method": cfg.calibration_method},
    }


def _calibration_texts(merged_dir: Path, cfg: ExportConfig) -> list[str] | None:
    if "int8-static" not in cfg.variants:
        return None
    heldout = cfg.parity_data or merged_dir / names.HELDOUT_FILE
    return training_texts(merged_dir, cfg.calibration_data, cfg.calibration_examples, heldout)


def export_onnx(merged_dir: Path, onnx_dir: Path, cfg: ExportConfig) -> Path:
    """Write ``model.onnx`` (dynamic batch and sequence axes) and the requested int8 variants."""
    weights = merged_dir / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"merged dir {merged_dir} has no model.safetensors; run the merge step first")
    source = _source(merged_dir, cfg)
    marker = onnx_dir / SOURCE_FILE
    wanted = [VARIANT_FILES[v] for v in ("fp32", *cfg.variants)]
    same = marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items() if k != "merged_dir"} == {
        k: v for k, v in source.items() if k != "merged_dir"
    }
    if same and all((onnx_dir / f).is_file() for f in wanted):
        log.info("already exported: %s", onnx_dir)
        return onnx_dir
    with atomic_folder(onnx_dir) as tmp:
        log.info("exporting %s to ONNX with Optimum", merged_dir)
        main_export(
            str(merged_dir),
            output=tmp,
            task="text-classification",
            opset=cfg.opset,
            do_validation=False,  # our parity check on held-out data replaces Optimum's random-input check
            library_name="transformers",
        )
        (tmp / "model.onnx").rename(tmp / UNFUSED_FILE)
        fp32 = tmp / CONTRACT.onnx_file
        if cfg.optimize:
            optimize_graph(tmp / UNFUSED_FILE, fp32)
        else:
            shutil.copy2(tmp / UNFUSED_FILE, fp32)
        if "int8" in cfg.variants:
            quantize_int8_dynamic(fp32, tmp / VARIANT_FILES["int8"], cfg.int8_per_channel)
        calibration = _calibration_texts(merged_dir, cfg)
        if calibration is not None:
            max_length = json.loads((merged_dir / names.TRAINING_CONFIG_FILE).read_text())["max_length"]
            graph = onnx.load(str(fp32), load_external_data=False).graph
            reader = TextCalibrationReader(merged_dir / "tokenizer.json", calibration, max_length,
                                           [i.name for i in graph.input])
            quantize_int8_static(fp32, tmp / VARIANT_FILES["int8-static"], reader, cfg.int8_per_channel,
                                 cfg.calibration_method)
        copy_carried(merged_dir, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return onnx_dir
