"""The drift reference of each exported variant: what the router's drift monitor compares live traffic with.

Written by the parity check from the outputs it already has (the held-out texts, the run's tokenizer, and
each variant's logits on those texts: no second pass over the model), one file per variant in
``runs/NAME/onnx/``, and copied by publish into each version as ``drift_reference.json``. The format is
``Reference`` below (defined here, in the stage that writes it; the router's drift monitor,
``serving.judge.drift``, reads it): tokens per text, unknown-token rate, the variant's top-class
probability per text and its predicted-label shares.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tunestack.layout import RunLayout

log = logging.getLogger(__name__)


def text_features(texts: Sequence[str], tokenizer) -> dict[str, np.ndarray]:
    """``text_length`` and ``unknown_token_rate`` per text, with a Hugging Face (fast) tokenizer."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    lengths = np.array([len(x) for x in ids], dtype=np.float64)
    unknown = np.array([sum(t == unk for t in x) / len(x) if x else 0.0 for x in ids], dtype=np.float64)
    return {"text_length": lengths, "unknown_token_rate": unknown}


@dataclass(frozen=True)
class Reference:
    """The training-time distribution of each feature (written at export time, read by the monitor)."""

    text_length: list[float]
    """Tokens per text of a reference sample (e.g. the held-out set)."""
    unknown_token_rate: list[float]
    """Unknown-token fraction per text of the same sample."""
    confidence: list[float] = field(default_factory=list)
    """Top-class probability of the model on the same sample (empty: not compared)."""
    label_shares: dict[str, float] = field(default_factory=dict)
    """Predicted-label shares on the same sample (empty: not compared)."""

    def __post_init__(self) -> None:
        problems = [f"{name}: empty reference sample" for name in ("text_length", "unknown_token_rate")
                    if len(getattr(self, name)) == 0]
        if self.label_shares and abs(sum(self.label_shares.values()) - 1) > 1e-6:
            problems.append(f"label_shares={self.label_shares}: expected shares summing to 1")
        if problems:
            raise ValueError("invalid drift reference: " + "; ".join(problems))

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer, labels: Iterable[str] = (),
                   confidences: Iterable[float] = ()) -> Reference:
        """The reference of a sample of texts, with the model's predictions on them if given."""
        feats = text_features(texts, tokenizer)
        counts = Counter(labels)
        total = sum(counts.values())
        return cls(feats["text_length"].tolist(), feats["unknown_token_rate"].tolist(),
                   [float(c) for c in confidences], {k: v / total for k, v in sorted(counts.items())})

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> Reference:
        return cls(**json.loads(Path(path).read_text()))


def reference_path(onnx_dir: Path, variant: str) -> Path:
    """``runs/NAME/onnx/drift_reference.VARIANT.json`` (``RunLayout.drift_reference``) in any export folder."""
    return Path(onnx_dir) / RunLayout.drift_reference_file(variant)


def write_reference(onnx_dir: Path, variant: str, texts: Sequence[str], tokenizer, logits: np.ndarray,
                    labels: Sequence[str]) -> Path:
    """Write the drift reference of ``variant`` from its ``logits`` on ``texts``; return the file."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = shifted / shifted.sum(axis=-1, keepdims=True)
    predicted = [labels[i] for i in probs.argmax(-1)]
    path = reference_path(onnx_dir, variant)
    Reference.from_texts(texts, tokenizer, labels=predicted, confidences=probs.max(-1).tolist()).write(path)
    log.info("drift reference of %s on %d held-out texts: %s", variant, len(texts), path)
    return path
