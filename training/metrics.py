"""Classification metrics and batched prediction, shared by training and the export parity check."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.special import log_softmax
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from transformers import PreTrainedTokenizerBase


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over all ``n_labels`` classes)."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_labels)), zero_division=0)),
        "examples": len(y_true),
    }


def logit_metrics(y_true: Sequence[int], logits: np.ndarray, labels: Sequence[str]) -> dict:
    """``classification_metrics`` plus the mean cross-entropy (``loss``), per-class F1 and, for two
    classes, ROC-AUC of the second class's score (None when the labels hold a single class)."""
    y = np.asarray(y_true, dtype=np.int64)
    n = len(labels)
    metrics: dict = classification_metrics(y, logits.argmax(-1), n)
    log_probs = log_softmax(logits.astype(np.float64), axis=-1)
    metrics["loss"] = float(-log_probs[np.arange(len(y)), y].mean()) if len(y) else float("nan")
    per_class = f1_score(y, logits.argmax(-1), average=None, labels=list(range(n)), zero_division=0)
    metrics["per_class_f1"] = {name: float(f) for name, f in zip(labels, per_class, strict=True)}
    binary = n == 2 and len(set(y.tolist())) == 2
    metrics["auc"] = float(roc_auc_score(y, log_probs[:, 1] - log_probs[:, 0])) if binary else None
    return metrics


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """Tokenize the way training and serving do: truncate to max_length, pad to the longest."""
    return dict(tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="np"))


@torch.inference_mode()
def torch_logits(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits of a torch sequence classifier for ``texts``, in batches, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = encode(tokenizer, texts[start : start + batch_size], max_length)
        device = next(model.parameters()).device
        out.append(model(**{k: torch.from_numpy(v).to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def evaluate(predict: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str], labels: Sequence[int], n_labels: int) -> dict[str, float]:
    logits = predict(texts)
    return classification_metrics(labels, logits.argmax(-1).tolist(), n_labels)
