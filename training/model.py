"""The base model and its tokenizer (the method-specific wrapping is in ``training.methods``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from training.bundled import bundled_model_dir
from training.errors import ModelError

log = logging.getLogger(__name__)


def resolve_model_dir(model: Path | None) -> Path:
    """The local model folder to fine-tune, with a clear error when it is not a model folder."""
    path = bundled_model_dir() if model is None else Path(model)
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist (no model hub here: give a local Hugging Face model folder)")
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ModelError(f"model folder {path} is missing config.json (found: {found})")
    return path


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:  # GPT-style models have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(model_dir: Path, labels: list[str], pad_token_id: int | None = None) -> torch.nn.Module:
    """A sequence classifier on top of the base model, with a fresh head for ``labels``."""
    id2label = dict(enumerate(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,
    )
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model
