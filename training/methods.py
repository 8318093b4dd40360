"""The fine-tuning methods: what each one trains, its default learning rate, and how export merges it.

Every accepted method ends as a plain transformers model (a classifier, or a causal LM) that export/ turns
into ONNX. All five apply to a causal LM too (peft task type CAUSAL_LM; its LM head, tied to the input
embeddings, is not trained separately; ``freeze`` also freezes those tied embeddings):
peft methods write an adapter (``adapter_config.json``) that ``merge_and_unload`` folds into the base;
``full`` and ``freeze`` write the whole fine-tuned model (``config.json`` + ``model.safetensors``) in
the same ``runs/NAME/adapter/`` folder, which the merge step copies as it is. Methods that cannot be
folded into a plain classifier (prompt and prefix tuning add virtual tokens the ONNX graph would not
have) are refused before anything loads.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import IA3Config, LoHaConfig, LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
)
from transformers import AutoConfig

from training.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: whether it is a peft adapter and the learning rate it trains well with."""

    name: str
    peft: bool
    default_learning_rate: float
    summary: str


METHODS = {
    m.name: m
    for m in (
        Method("lora", True, 1e-3, "LoRA: low-rank updates on the attention projections (peft), head in full"),
        Method("full", False, 5e-5, "full fine-tuning: every weight trains"),
        Method("freeze", False, 1e-4, "partial: embeddings + the bottom --freeze-layers layers frozen, the rest trains"),
        Method("ia3", True, 5e-3, "IA3: learned rescaling of keys, values and feed-forward outputs (peft), head in full"),
        Method("loha", True, 1e-3, "LoHa: low-rank Hadamard-product updates (peft), head in full"),
    )
}
"""The methods ``--method`` accepts, by name."""

REFUSED = {
    "prompt_tuning": "it prepends learned virtual token embeddings",
    "prefix_tuning": "it prepends learned key/value prefixes to every attention layer",
    "p_tuning": "it prepends virtual tokens from a prompt encoder",
}
"""peft methods that cannot be merged into a plain ONNX classifier, with the reason."""

HEAD_MODULES = ("pre_classifier", "classifier", "score")
"""Classification-head module names across architectures; the ones present are trained in full."""

LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block)\.(\d+)\.")
"""The transformer block index in a parameter name (BERT ``encoder.layer.3.``, GPT ``h.3.``, ...)."""
EMBEDDINGS = ("embeddings", "embed_tokens", "wte", "wpe")
"""Parameter-name parts of the input embeddings (BERT ``embeddings``, Llama ``embed_tokens``, GPT-2 ``wte``/``wpe``)."""


def check_method(method: str) -> list[str]:
    """Problems with ``method`` (empty when it is accepted)."""
    if method in METHODS:
        return []
    if method in REFUSED:
        return [f"method {method!r} cannot be exported: {REFUSED[method]}, which a plain ONNX classifier "
                f"(input_ids -> logits) does not have and merge_and_unload cannot fold into the weights; "
                f"use one of: {', '.join(METHODS)}"]
    return [f"unknown method {method!r}; expected one of: {', '.join(METHODS)}"]


def model_depth(model_dir: Path) -> int:
    """Number of transformer blocks of the model in ``model_dir`` (from its config.json)."""
    config = AutoConfig.from_pretrained(model_dir)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise ModelError(f"cannot tell the depth of {model_dir}: its config has none of num_hidden_layers, n_layer, num_layers")


def _module_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


def _targets(model: torch.nn.Module, model_dir: Path, wanted: tuple[str, ...], mapping: dict, method: str) -> list[str]:
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    targets = list(wanted) or list(mapping.get(model_type) or [])
    if not targets:
        raise ModelError(f"no default {method} target modules for model type {model_type!r}; pass --target-modules "
                         "(the names of its attention projections, e.g. q_proj,v_proj)")
    names = {name for name, _ in model.named_modules()}
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ModelError(f"{method} target module(s) {missing} not found in {model_dir}; "
                         f"some module names: {sorted(_module_names(model))[:20]}")
    return targets


def peft_config(method: str, model: torch.nn.Module, model_dir: Path, cfg) -> object:
    """The peft config of ``method`` for ``model`` (``cfg`` is the TrainConfig)."""
    if cfg.task == "causal-lm":  # the LM head is tied to the embeddings: it stays as it is
        common = {"task_type": TaskType.CAUSAL_LM}
    else:
        common = {"task_type": TaskType.SEQ_CLS, "modules_to_save": [h for h in HEAD_MODULES if h in _module_names(model)]}
    if method == "lora":
        targets = _targets(model, model_dir, cfg.target_modules, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, method)
        return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets, **common)
    if method == "loha":
        targets = _targets(model, model_dir, cfg.target_modules, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, method)
        return LoHaConfig(r=cfg.lora_r, alpha=cfg.lora_alpha, rank_dropout=cfg.lora_dropout, module_dropout=0.0,
                          target_modules=targets, **common)
    if method == "ia3":
        model_type = AutoConfig.from_pretrained(model_dir).model_type
        targets = _targets(model, model_dir, cfg.target_modules, TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING, method)
        feedforward = [t for t in TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, []) if t in targets]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, **common)
    raise ConfigError(f"method {method!r} is not a peft method")  # internal: callers check METHODS first


def freeze_bottom(model: torch.nn.Module, n_layers: int) -> list[str]:
    """Freeze the embeddings and the bottom ``n_layers`` blocks of ``model``; returns the frozen prefixes."""
    frozen = []
    for name, param in model.named_parameters():
        match = LAYER_INDEX.search(name)
        if any(part in name for part in EMBEDDINGS) or (match and int(match.group(1)) < n_layers):
            param.requires_grad_(False)
            frozen.append(name)
    if not frozen:
        raise ModelError("freeze found no embedding or layer parameters to freeze in this model")
    return frozen


def prepare(model: torch.nn.Module, model_dir: Path, cfg) -> torch.nn.Module:
    """Make the parameters ``cfg.method`` trains trainable (wrapping peft methods); log the share."""
    if cfg.method == "freeze":
        freeze_bottom(model, cfg.freeze_layers)
    elif METHODS[cfg.method].peft:
        model = get_peft_model(model, peft_config(cfg.method, model, model_dir, cfg))
    trainable, total = count_parameters(model)
    summary = METHODS[cfg.method].summary
    if cfg.task == "causal-lm":  # no classification head: the LM head is the tied embedding matrix
        summary = summary.removesuffix(", head in full")
    log.info("%s: %d trainable of %d params (%.3f %%)", summary, trainable, total, 100 * trainable / total)
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; for a peft model, of the base plus the adapter."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def layer_depth(name: str, n_layers: int) -> int:
    """Depth of a parameter for layer-wise LR decay: embeddings 0, block i -> i + 1, the rest (head) n + 1."""
    if any(part in name for part in EMBEDDINGS):
        return 0
    match = LAYER_INDEX.search(name)
    return int(match.group(1)) + 1 if match else n_layers + 1
