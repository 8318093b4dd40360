"""Classification metrics and batched prediction, shared by training and the export parity check."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import PreTrainedTokenizerBase


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over all ``n_labels`` classes)."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_labels)), zero_division=0)),
        "examples": len(y_true),
    }


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
        out.append(model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def evaluate(predict: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str], labels: Sequence[int], n_labels: int) -> dict[str, float]:
    logits = predict(texts)
    return classification_metrics(labels, logits.argmax(-1).tolist(), n_labels)
