"""Prove the export: compare each ONNX variant with the merged torch model on held-out data.

The gate (thresholds in ``ExportConfig``): fp32 must agree with torch on the labels and stay within a
max |logit difference|; int8 and int8-static may each lose at most a set number of accuracy points
against fp32. A variant that fails is reported with its figures and is not marked publishable.

Batch invariance is measured for every variant and reported, not gated: held-out probes scored alone
and inside a batch of 16 other texts (padded to the longest) must keep their label and move their
probabilities by at most ``batch_invariance_tolerance``; ``batch_invariant: false`` documents a variant
whose answer can change with its batch-mates (dynamic int8 quantizes activations per batch).
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

from export.config import INT8_VARIANTS, ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.drift_reference import reference_path, write_reference
from export.errors import InputError
from training.data import read_jsonl
from training.metrics import classification_metrics, encode, torch_logits
from tunestack import names
from tunestack.files import sha256

log = logging.getLogger(__name__)

GATE_SETTINGS = ("parity_max_examples", "fp32_max_abs_diff", "fp32_min_agreement", "int8_max_accuracy_drop",
                 "batch_invariance_probes", "batch_invariance_tolerance")
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
    batch_invariant: bool | None = None
    """Every probe kept its label and its probabilities within the tolerance alone and in a batch of 16
    others (None: not measured)."""
    batch_invariance: dict = field(default_factory=dict)
    """{"probes", "batch_mates", "max_prob_diff", "label_changes", "tolerance"}."""


def onnx_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: ort.InferenceSession, tokenizer, texts: Sequence[str], max_length: int, batch_size: int) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    out = []
    for start in range(0, len(texts), batch_size):
        enc = encode(tokenizer, texts[start : start + batch_size], max_length)
        out.append(session.run([CONTRACT.onnx_logits], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0])
    return np.concatenate(out)


BATCH_MATES = 16
"""Other texts around each batch-invariance probe."""


def batch_invariance(run, texts: Sequence[str], probes: int, tolerance: float) -> dict:
    """Score ``probes`` texts alone and in the middle of a batch of ``BATCH_MATES`` others.

    ``run(texts) -> logits``. The batch-mates are the next texts of the list (wrapping), so each probe
    is padded to a longer neighbour's length in some batches and sets the length in others.
    """
    probes = min(probes, len(texts))
    worst, changed = 0.0, 0
    for i in range(probes):
        mates = [texts[(i + 1 + k) % len(texts)] for k in range(BATCH_MATES)]
        half = BATCH_MATES // 2
        alone = _softmax(run([texts[i]]))[0]
        inside = _softmax(run(mates[:half] + [texts[i]] + mates[half:]))[half]
        worst = max(worst, float(np.abs(alone - inside).max()))
        changed += int(alone.argmax() != inside.argmax())
    return {"probes": probes, "batch_mates": BATCH_MATES, "max_prob_diff": worst, "label_changes": changed,
            "tolerance": tolerance, "invariant": changed == 0 and worst <= tolerance}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _check(name: str, value: float, threshold: float, passed: bool) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(passed)}


def _measure_variant(path: Path, variant: str, cfg: ExportConfig, tokenizer, texts: list[str], y_true: list[int],
                     labels: list[str], max_length: int, reference: np.ndarray) -> VariantParity:
    """One variant's figures against the torch ``reference`` logits (no verdict yet); writes its drift reference."""
    session = onnx_session(path)
    logits = onnx_logits(session, tokenizer, texts, max_length, cfg.parity_batch_size)
    write_reference(path.parent, variant, texts, tokenizer, logits, labels)  # the same outputs, not a rerun
    diff = np.abs(logits - reference)
    metrics = classification_metrics(y_true, logits.argmax(-1).tolist(), len(labels))
    result = VariantParity(
        variant=variant,
        file=path.name,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        label_agreement=float((logits.argmax(-1) == reference.argmax(-1)).mean()),
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"],
    )
    if cfg.batch_invariance_probes:
        run = lambda batch: onnx_logits(session, tokenizer, batch, max_length, len(batch))  # noqa: E731
        found = batch_invariance(run, texts, cfg.batch_invariance_probes, cfg.batch_invariance_tolerance)
        result.batch_invariant = found.pop("invariant")
        result.batch_invariance = found
    return result


def _apply_gate(results: dict[str, VariantParity], cfg: ExportConfig) -> None:
    """Fill each variant's checks and verdict: fp32 against torch, every int8 variant against fp32."""
    fp32 = results["fp32"]
    fp32.checks = [
        _check("max_abs_diff", fp32.max_abs_diff, cfg.fp32_max_abs_diff, fp32.max_abs_diff <= cfg.fp32_max_abs_diff),
        _check("label_agreement", fp32.label_agreement, cfg.fp32_min_agreement, fp32.label_agreement >= cfg.fp32_min_agreement),
    ]
    fp32.publishable = all(c["passed"] for c in fp32.checks)
    for int8 in (results[v] for v in INT8_VARIANTS if v in results):
        drop = 100.0 * (fp32.accuracy - int8.accuracy)
        int8.checks = [
            _check("accuracy_drop_points", drop, cfg.int8_max_accuracy_drop, drop <= cfg.int8_max_accuracy_drop),
            _check("fp32_export_passed", float(fp32.publishable), 1.0, fp32.publishable),
        ]
        int8.publishable = all(c["passed"] for c in int8.checks)


def check_parity(onnx_dir: Path, merged_dir: Path, cfg: ExportConfig) -> dict:
    """Run the parity check and the gate; write ``onnx_dir/parity.json`` and return its content."""
    heldout = cfg.parity_data or merged_dir / names.HELDOUT_FILE
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
        if report.get("source") == source and all(reference_path(onnx_dir, v).is_file() for v in needed):
            log.info("parity already checked for these exact files: %s", previous)
            return report
    examples = read_jsonl(heldout)[: cfg.parity_max_examples]
    labels = json.loads((merged_dir / CONTRACT.label_map_file).read_text())["labels"]
    max_length = json.loads((merged_dir / names.TRAINING_CONFIG_FILE).read_text())["max_length"]
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
        results[variant] = _measure_variant(path, variant, cfg, tokenizer, texts, y_true, labels, max_length, reference)
    _apply_gate(results, cfg)
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
    rows = [f"{'variant':<11} {'max|diff|':>10} {'agree':>7} {'acc':>7} {'macroF1':>8} {'batch-inv (max|dp|)':>20}  verdict"]
    rows.append(f"{'torch':<11} {'-':>10} {'-':>7} {report['torch']['accuracy']:>7.4f} {report['torch']['macro_f1']:>8.4f} {'-':>20}  reference")
    for name, v in report["variants"].items():
        failed = [f"{c['name']}={c['value']:.3g} (limit {c['threshold']:.3g})" for c in v["checks"] if not c["passed"]]
        verdict = "PASS, publishable" if v["publishable"] else "FAIL: " + "; ".join(failed)
        rows.append(f"{name:<11} {v['max_abs_diff']:>10.2e} {v['label_agreement']:>7.2%} {v['accuracy']:>7.4f} "
                    f"{v['macro_f1']:>8.4f} {_batch_cell(v):>20}  {verdict}")
    return "\n".join(rows)


def _batch_cell(variant: dict) -> str:
    found = variant.get("batch_invariance") or {}
    if variant.get("batch_invariant") is None or not found:
        return "not measured"
    return f"{'yes' if variant['batch_invariant'] else 'NO'} ({found['max_prob_diff']:.1e})"
