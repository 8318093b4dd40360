"""Convert the merged model to ONNX with Optimum, and quantize it to int8 with ONNX Runtime."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from optimum.exporters.onnx import main_export

from export.config import ExportConfig
from export.contract import CONTRACT
from export.errors import InputError
from export.merge import copy_carried
from training.files import atomic_folder, sha256

log = logging.getLogger(__name__)

SOURCE_FILE = "export_source.json"


def export_onnx(merged_dir: Path, onnx_dir: Path, cfg: ExportConfig) -> Path:
    """Write ``model.onnx`` (dynamic batch and sequence axes) and, if asked, ``model.int8.onnx``."""
    weights = merged_dir / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"merged dir {merged_dir} has no model.safetensors; run the merge step first")
    source = {
        "merged_dir": str(merged_dir.resolve()),
        "merged_sha256": sha256(weights),
        "opset": cfg.opset,
        "int8_per_channel": cfg.int8_per_channel,
    }
    marker = onnx_dir / SOURCE_FILE
    wanted = [CONTRACT.onnx_file] + ([CONTRACT.onnx_int8_file] if "int8" in cfg.variants else [])
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
        if (tmp / "model.onnx").name != CONTRACT.onnx_file:
            (tmp / "model.onnx").rename(tmp / CONTRACT.onnx_file)
        if "int8" in cfg.variants:
            log.info("quantizing to int8 (dynamic, %s weights)", "per-channel" if cfg.int8_per_channel else "per-tensor")
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor (and a pre-processing hint) on the root logger
            try:
                quantize_dynamic(
                    tmp / CONTRACT.onnx_file,
                    tmp / CONTRACT.onnx_int8_file,
                    weight_type=QuantType.QInt8,
                    per_channel=cfg.int8_per_channel,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
            finally:
                root.setLevel(level)
        copy_carried(merged_dir, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return onnx_dir
