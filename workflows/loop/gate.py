"""The offline gate of a retrain cycle: the candidate against production, on the same texts, before any canary.

Both exports (``VARIANT_FILES[variant]`` of their onnx/ folders) predict in process with onnxruntime. Two
comparisons, each the paired difference of accuracy (candidate minus production, per text: +1, 0 or -1) with
a normal interval on the mean difference (the paired-proportions interval; the pairs are independent texts):

* ``shifted``: the newest labelled traffic (the cycle's evaluation part): the interval's lower bound must
  exceed ``min_gain``: the candidate is better there, by at least that much, at the stated confidence;
* ``original``: the original held-out set: the lower bound must be at least ``-max_forgetting``: whatever the
  candidate forgot of the old task costs at most that much (non-inferiority).

* ``labels``: the candidate's accuracy on the newest labelled traffic (the upper bound of its Wilson interval) may
  be at most ``max_label_gap`` below production's accuracy on the original held-out set: feedback that a
  model trained on it cannot reproduce as well as the original labels are reproduced is suspect (wrong or
  hostile labels cap what any model can score on them). Both models are scored against the same feedback
  labels in ``shifted``, so flipped labels alone do not show there.

Each accuracy also carries its Wilson interval, for the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from export.contract import CONTRACT, VARIANT_FILES
from export.parity import onnx_logits, onnx_session
from training.data import Example
from tunestack import names


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def wilson(correct: int, n: int, confidence: float) -> Interval:
    """A binomial proportion with its Wilson score interval."""
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(candidate: np.ndarray, production: np.ndarray, confidence: float) -> Interval:
    """Mean of ``candidate - production`` (0/1 correctness per text) with a normal interval."""
    d = candidate.astype(float) - production.astype(float)
    n = len(d)
    if n < 2:
        return Interval(float(d.mean()) if n else float("nan"), -1.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(float(d.mean()), float(d.mean()) - half, float(d.mean()) + half)


class Predictor:
    """An export folder's variant, predicting label names in process."""

    def __init__(self, onnx_dir: Path, variant: str = "fp32"):
        from transformers import AutoTokenizer

        self.labels = json.loads((onnx_dir / CONTRACT.label_map_file).read_text())["labels"]
        self.max_length = int(json.loads((onnx_dir / names.TRAINING_CONFIG_FILE).read_text())["max_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
        self.session = onnx_session(onnx_dir / VARIANT_FILES[variant])

    def correct(self, examples: Sequence[Example]) -> np.ndarray:
        """1 where the predicted label is the example's, else 0."""
        if not examples:
            return np.zeros(0, dtype=np.int64)
        logits = onnx_logits(self.session, self.tokenizer, [e.text for e in examples], self.max_length, 64)
        predicted = [self.labels[i] for i in logits.argmax(-1)]
        return np.asarray([p == e.label for p, e in zip(predicted, examples, strict=True)], dtype=np.int64)


def compare(candidate: Predictor, production: Predictor, examples: Sequence[Example], confidence: float) -> dict:
    """Both accuracies (Wilson intervals) and their paired difference on ``examples``."""
    c, p = candidate.correct(examples), production.correct(examples)
    return {"n": len(examples), "candidate": asdict(wilson(int(c.sum()), len(c), confidence)),
            "production": asdict(wilson(int(p.sum()), len(p), confidence)),
            "difference": asdict(paired_difference(c, p, confidence))}


def offline_gate(candidate_onnx: Path, production_onnx: Path, shifted: Sequence[Example], original: Sequence[Example],
                 *, variant: str, min_gain: float, max_forgetting: float, confidence: float,
                 max_label_gap: float = 1.0) -> dict:
    """The gate's evidence and verdict: ``passed`` and, when it failed, ``reasons``."""
    cand, prod = Predictor(candidate_onnx, variant), Predictor(production_onnx, variant)
    out = {"shifted": compare(cand, prod, shifted, confidence), "original": compare(cand, prod, original, confidence),
           "min_gain": min_gain, "max_forgetting": max_forgetting, "max_label_gap": max_label_gap,
           "confidence": confidence}
    reasons = []
    gain = out["shifted"]["difference"]
    if not gain["low"] > min_gain:
        reasons.append(f"on the newest labelled traffic (n={out['shifted']['n']}) the candidate's accuracy gain "
                       f"{gain['value']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}] does not exceed {min_gain:+.3f}")
    loss = out["original"]["difference"]
    if not loss["low"] >= -max_forgetting:
        reasons.append(f"on the original held-out set (n={out['original']['n']}) the accuracy change "
                       f"{loss['value']:+.3f} [{loss['low']:+.3f}, {loss['high']:+.3f}] may lose more than "
                       f"{max_forgetting:.3f}")
    reached, standard = out["shifted"]["candidate"]["high"], out["original"]["production"]["value"]
    if reached < standard - max_label_gap:
        reasons.append(f"the feedback labels look wrong: the candidate, trained on them, reproduces at most {reached:.3f} "
                       f"of the newest ones, more than {max_label_gap:.3f} below production's {standard:.3f} on the "
                       "original held-out set")
    return {**out, "passed": not reasons, "reasons": reasons}
