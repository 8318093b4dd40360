"""Prove the export: compare each ONNX variant with the merged torch model on held-out data.

The gate (thresholds in ``ExportConfig``): fp32 must agree with torch on the labels and stay within a
max |logit difference|; int8 may lose at most a set number of accuracy points against fp32. A variant
that fails is reported with its figures and is not marked publishable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from export.config import ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.errors import InputError
from training.data import read_jsonl
from training.files import sha256
from training.metrics import classification_metrics, encode, torch_logits

log = logging.getLogger(__name__)

GATE_SETTINGS = ("parity_max_examples", "fp32_max_abs_diff", "fp32_min_agreement", "int8_max_accuracy_drop")
"""The settings a parity report depends on, besides the files: a change re-runs the check."""


@dataclass
class VariantParity:
    """One exported variant against the torch model: figures, gate checks, verdict."""

    variant: str
    file: str
    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: float
    accuracy: float
    macro_f1: float
    checks: list[dict] = field(default_factory=list)
    """Each gate check: {"name", "value", "threshold", "passed"}."""
    publishable: bool = False


def onnx_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: ort.InferenceSession, tokenizer, texts: Sequence[str], max_length: int, batch_size: int) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    out = []
    for start in range(0, len(texts), batch_size):
        enc = encode(tokenizer, texts[start : start + batch_size], max_length)
        out.append(session.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0])
    return np.concatenate(out)


def _check(name: str, value: float, threshold: float, passed: bool) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(passed)}


def check_parity(onnx_dir: Path, merged_dir: Path, cfg: ExportConfig) -> dict:
    """Run the parity check and the gate; write ``onnx_dir/parity.json`` and return its content."""
    heldout = cfg.parity_data or merged_dir / "heldout.jsonl"
    if not heldout.is_file():
        raise InputError(f"no held-out data for the parity check: {heldout} does not exist (pass --parity-data FILE.jsonl)")
    needed = ["fp32"] + [v for v in cfg.variants if v != "fp32"]  # int8 is judged against fp32
    source = {
        "heldout_sha256": sha256(heldout),
        "files_sha256": {v: sha256(onnx_dir / VARIANT_FILES[v]) for v in needed if (onnx_dir / VARIANT_FILES[v]).is_file()},
        "merged_sha256": sha256(merged_dir / "model.safetensors"),
        "settings": {k: getattr(cfg, k) for k in GATE_SETTINGS},
        "requested": list(cfg.variants),
    }
    previous = onnx_dir / CONTRACT.parity_file
    if previous.is_file():
        report = json.loads(previous.read_text())
        if report.get("source") == source:
            log.info("parity already checked for these exact files: %s", previous)
            return report
    examples = read_jsonl(heldout)[: cfg.parity_max_examples]
    labels = json.loads((merged_dir / CONTRACT.label_map_file).read_text())["labels"]
    max_length = json.loads((merged_dir / "training_config.json").read_text())["max_length"]
    unknown = sorted({ex.label for ex in examples} - set(labels))
    if unknown:
        raise InputError(f"held-out data {heldout} has label(s) {unknown} the model does not know (labels: {labels})")
    texts = [ex.text for ex in examples]
    y_true = [labels.index(ex.label) for ex in examples]
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    log.info("parity: torch reference on %d held-out examples", len(texts))
    model = AutoModelForSequenceClassification.from_pretrained(merged_dir)
    reference = torch_logits(model, tokenizer, texts, max_length, cfg.parity_batch_size)
    ref_labels = reference.argmax(-1)

    results: dict[str, VariantParity] = {}
    for variant in needed:
        path = onnx_dir / VARIANT_FILES[variant]
        if not path.is_file():
            raise InputError(f"{path} does not exist; run the ONNX export with --variants {variant}")
        log.info("parity: %s (%s)", variant, path.name)
        logits = onnx_logits(onnx_session(path), tokenizer, texts, max_length, cfg.parity_batch_size)
        diff = np.abs(logits - reference)
        metrics = classification_metrics(y_true, logits.argmax(-1).tolist(), len(labels))
        results[variant] = VariantParity(
            variant=variant,
            file=path.name,
            max_abs_diff=float(diff.max()),
            mean_abs_diff=float(diff.mean()),
            label_agreement=float((logits.argmax(-1) == ref_labels).mean()),
            accuracy=metrics["accuracy"],
            macro_f1=metrics["macro_f1"],
        )
    fp32 = results["fp32"]
    fp32.checks = [
        _check("max_abs_diff", fp32.max_abs_diff, cfg.fp32_max_abs_diff, fp32.max_abs_diff <= cfg.fp32_max_abs_diff),
        _check("label_agreement", fp32.label_agreement, cfg.fp32_min_agreement, fp32.label_agreement >= cfg.fp32_min_agreement),
    ]
    fp32.publishable = all(c["passed"] for c in fp32.checks)
    if "int8" in results:
        int8 = results["int8"]
        drop = 100.0 * (fp32.accuracy - int8.accuracy)
        int8.checks = [
            _check("accuracy_drop_points", drop, cfg.int8_max_accuracy_drop, drop <= cfg.int8_max_accuracy_drop),
            _check("fp32_export_passed", float(fp32.publishable), 1.0, fp32.publishable),
        ]
        int8.publishable = all(c["passed"] for c in int8.checks)
    torch_metrics = classification_metrics(y_true, ref_labels.tolist(), len(labels))
    report = {
        "heldout": str(heldout),
        "examples": len(texts),
        "max_length": max_length,
        "labels": labels,
        "torch": {"accuracy": torch_metrics["accuracy"], "macro_f1": torch_metrics["macro_f1"]},
        "requested": list(cfg.variants),
        "variants": {name: asdict(result) for name, result in results.items()},
        "passed": all(results[v].publishable for v in cfg.variants),
        "source": source,
    }
    (onnx_dir / CONTRACT.parity_file).write_text(json.dumps(report, indent=2))
    return report


def format_table(report: dict) -> str:
    """The parity report as a fixed-width table, one row per variant, naming failed checks."""
    rows = [f"{'variant':<8} {'max|diff|':>10} {'agree':>7} {'acc':>7} {'macroF1':>8}  verdict"]
    rows.append(f"{'torch':<8} {'-':>10} {'-':>7} {report['torch']['accuracy']:>7.4f} {report['torch']['macro_f1']:>8.4f}  reference")
    for name, v in report["variants"].items():
        failed = [f"{c['name']}={c['value']:.3g} (limit {c['threshold']:.3g})" for c in v["checks"] if not c["passed"]]
        verdict = "PASS, publishable" if v["publishable"] else "FAIL: " + "; ".join(failed)
        rows.append(f"{name:<8} {v['max_abs_diff']:>10.2e} {v['label_agreement']:>7.2%} {v['accuracy']:>7.4f} {v['macro_f1']:>8.4f}  {verdict}")
    return "\n".join(rows)
