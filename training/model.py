"""The base model, its tokenizer, and the LoRA wrapping (peft)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from training.bundled import bundled_model_dir
from training.config import TrainConfig
from training.errors import ModelError

log = logging.getLogger(__name__)

HEAD_MODULES = ("pre_classifier", "classifier", "score")
"""Classification-head module names across architectures; the ones present are trained in full."""


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


def default_target_modules(model_dir: Path) -> list[str]:
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    modules = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not modules:
        raise ModelError(
            f"no default LoRA target modules for model type {model_type!r}; pass --target-modules "
            "(the names of its attention projections, e.g. q_proj,v_proj)"
        )
    return list(modules)


def add_lora(model: torch.nn.Module, model_dir: Path, cfg: TrainConfig) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; the classification head is trained in full."""
    targets = list(cfg.target_modules) or default_target_modules(model_dir)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ModelError(f"LoRA target module(s) {missing} not found in {model_dir}; some module names: {sorted(names)[:20]}")
    heads = [h for h in HEAD_MODULES if h in names]
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        modules_to_save=list(heads),
    )
    peft_model = get_peft_model(model, lora)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA on %s (+ head %s): %d trainable of %d params (%.2f %%)", targets, heads, trainable, total, 100 * trainable / total)
    return peft_model
