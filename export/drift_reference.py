"""The drift reference of each exported variant: what the router's drift monitor compares live traffic with.

Written by the parity check from the outputs it already has (the held-out texts, the run's tokenizer, and
each variant's logits on those texts: no second pass over the model), one file per variant in
``runs/NAME/onnx/``, and copied by publish into each version as ``drift_reference.json``. The format is
``serving.judge.drift.Reference``: tokens per text, unknown-token rate, the variant's top-class
probability per text and its predicted-label shares.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.contract import CONTRACT

log = logging.getLogger(__name__)


def reference_path(onnx_dir: Path, variant: str) -> Path:
    """``runs/NAME/onnx/drift_reference.VARIANT.json``."""
    stem, _, suffix = CONTRACT.drift_reference_file.rpartition(".")
    return Path(onnx_dir) / f"{stem}.{variant}.{suffix}"


def write_reference(onnx_dir: Path, variant: str, texts: Sequence[str], tokenizer, logits: np.ndarray,
                    labels: Sequence[str]) -> Path:
    """Write the drift reference of ``variant`` from its ``logits`` on ``texts``; return the file."""
    # the reference format lives with the monitor that reads it (a data format, not serving code)
    from serving.judge.drift import Reference

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    predicted = [labels[i] for i in probs.argmax(-1)]
    path = reference_path(onnx_dir, variant)
    Reference.from_texts(texts, tokenizer, labels=predicted, confidences=probs.max(-1).tolist()).write(path)
    log.info("drift reference of %s on %d held-out texts: %s", variant, len(texts), path)
    return path
