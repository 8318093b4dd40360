"""Cheaper compute for the exported graph: ORT transformer fusions, dynamic int8 and static int8.

``model.unfused.onnx`` (Optimum) -> ``model.onnx`` (attention / LayerNorm / GELU fused by ONNX Runtime's
transformer optimizer) -> ``model.int8.onnx`` (dynamic: weights int8, activations quantized per batch at
run time) and ``model.int8-static.onnx`` (static: QDQ with activation ranges calibrated on TRAINING
texts, never the held-out ones the parity gate scores).

Dynamic quantization computes each activation's scale from the whole batch, padding included, so an
answer can move with its batch-mates; static scales are fixed at export, which is what makes the static
variant batch-invariant (``export.parity`` measures both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.errors import InputError
from training.config import TrainConfig
from training.data import load_splits, read_jsonl
from tunestack import names

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
"""``ExportConfig.calibration_method`` -> ONNX Runtime's calibrator."""
STATIC_OP_TYPES = ("MatMul",)
"""Ops the static variant quantizes: the dense layers outside the fused attention (the classifier Gemm
stays fp32: its int32 bias cannot be scaled from a calibrated Tanh)."""
FLOAT_CONSUMERS = ("BiasGelu", "Gelu", "FastGelu")
"""A MatMul feeding only these stays fp32 in the static variant: with no quantized consumer ONNX Runtime
cannot fuse its QDQ pair into an integer MatMul and would dequantize the weights on every call."""
FLOAT_DEFAULT = {"DefaultTensorType": onnx.TensorProto.FLOAT}
"""Needed on a fused graph: the quantizer cannot infer the type of some contrib-op outputs."""


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs a line per tensor (and a pre-processing hint) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def optimize_graph(src: Path, dst: Path) -> dict[str, int]:
    """Fuse attention, LayerNorm and GELU with ONNX Runtime's transformer optimizer (BERT family);
    return the count of each fused operator (all zero: nothing was recognised, the graph is unchanged)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_root_logger():
        model = optimize_model(str(src), model_type="bert")  # heads and hidden size detected from the graph
        model.save_model_to_file(str(dst))
    fused = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    log.info("fused operators: %s", fused or "none (the graph is not a BERT-like encoder)")
    return fused


def quantize_int8_dynamic(src: Path, dst: Path, per_channel: bool) -> None:
    """int8 weights; activations quantized at run time from each batch's own range."""
    log.info("quantizing to int8 (dynamic, %s weights)", "per-channel" if per_channel else "per-tensor")
    with _quiet_root_logger():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel, extra_options=FLOAT_DEFAULT)


class TextCalibrationReader(CalibrationDataReader):
    """Feeds tokenized calibration texts to the calibrator, ``batch_size`` at a time."""

    def __init__(self, tokenizer_file: Path, texts: Sequence[str], max_length: int, input_names: Sequence[str],
                 batch_size: int = 16):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding()
        self._batches = []
        for start in range(0, len(texts), batch_size):
            encodings = tokenizer.encode_batch(list(texts[start : start + batch_size]))
            arrays = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                      "token_type_ids": [e.type_ids for e in encodings]}
            self._batches.append({n: np.array(arrays[n], dtype=np.int64) for n in input_names})
        self._next = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._batches)


def quantize_int8_static(src: Path, dst: Path, reader: TextCalibrationReader, per_channel: bool,
                         method: str) -> None:
    """QDQ int8 (weights and activations, symmetric int8) with activation ranges from ``reader``."""
    log.info("quantizing to int8 (static QDQ, %s calibration, %s weights)", method,
             "per-channel" if per_channel else "per-tensor")
    with tempfile.TemporaryDirectory(prefix="tunestack-quant-") as tmp, _quiet_root_logger():
        prepared = Path(tmp) / "prepared.onnx"  # symbolic shape inference: without it most MatMuls are skipped
        quant_pre_process(str(src), str(prepared), skip_optimization=True)
        excluded = float_output_matmuls(onnx.load(str(prepared)).graph)
        quantize_static(prepared, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OP_TYPES),
                        nodes_to_exclude=excluded,
                        per_channel=per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                        calibrate_method=CALIBRATION_METHODS[method], extra_options=FLOAT_DEFAULT)


def float_output_matmuls(graph: onnx.GraphProto) -> list[str]:
    """Names of the MatMul nodes whose outputs feed only ``FLOAT_CONSUMERS``."""
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    return [node.name for node in graph.node if node.op_type == "MatMul"
            and all(op in FLOAT_CONSUMERS for out in node.output for op in consumers.get(out, ["output"]))]


def training_texts(merged_dir: Path, data: Path | None, limit: int, heldout: Path | None) -> list[str]:
    """Up to ``limit`` calibration texts: ``data`` (JSONL) or the run's own training split, re-derived
    from its ``training_config.json``. Refuses texts that are in the held-out set the gate scores."""
    if data is not None:
        if not data.is_file():
            raise InputError(f"calibration data {data} does not exist; expected a JSONL file of training examples")
        texts = [ex.text for ex in read_jsonl(data)]
        source = str(data)
    else:
        config_file = merged_dir / names.TRAINING_CONFIG_FILE
        if not config_file.is_file():
            raise InputError(f"{config_file} is missing, so the training split cannot be re-derived for calibration; "
                             "pass --calibration-data TRAIN.jsonl")
        saved = json.loads(config_file.read_text())
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        texts = [ex.text for ex in load_splits(TrainConfig(**{k: v for k, v in saved.items() if k in known})).train]
        source = f"the training split of {config_file}"
    held = {ex.text for ex in read_jsonl(heldout)} if heldout is not None and heldout.is_file() else set()
    leaked = sum(text in held for text in texts)
    if leaked:
        raise InputError(f"{leaked} calibration text(s) from {source} are in the held-out set {heldout}; "
                         "calibrate on training texts only")
    if not texts:
        raise InputError(f"no calibration texts in {source}")
    log.info("calibration: %d training texts from %s", min(limit, len(texts)), source)
    return texts[:limit]
