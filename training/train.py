"""The training loop: any method of ``training.methods`` with periodic evaluation, early stopping and a time budget."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import set_seed

from training.config import TrainConfig
from training.data import Example, Splits, load_splits, write_jsonl
from training.distributed import Dist
from training.errors import ConfigError
from training.loop import OptimizerStep, TrainResult, check_before_training, total_steps, training_loop
from training.methods import count_parameters, model_depth, prepare
from training.metrics import encode, logit_metrics, torch_logits
from training.model import load_classifier, load_tokenizer, resolve_model_dir
from tunestack import names, tracking
from tunestack.files import atomic_folder

log = logging.getLogger(__name__)


def _evaluate(model, tokenizer, examples: list[Example], labels: list[str], cfg: TrainConfig, dist: Dist) -> dict:
    """Metrics over ``examples``; each process predicts its share, the predictions are gathered."""
    mine = examples[dist.rank :: dist.world_size]
    logits = torch_logits(model, tokenizer, [ex.text for ex in mine], cfg.max_length, cfg.eval_batch_size)
    pairs = dist.gather([(labels.index(ex.label), row.tolist()) for ex, row in zip(mine, logits, strict=True)])
    return logit_metrics([t for t, _ in pairs], np.asarray([r for _, r in pairs], dtype=np.float32), labels)


def _classifier_loss(forward: torch.nn.Module, tokenizer, labels: list[str], cfg: TrainConfig, device: torch.device):
    label_ids = {label: i for i, label in enumerate(labels)}

    def loss(batch: list[Example]) -> torch.Tensor:
        enc = encode(tokenizer, [ex.text for ex in batch], cfg.max_length)
        inputs = {k: torch.from_numpy(v).to(device) for k, v in enc.items()}
        targets = torch.tensor([label_ids[ex.label] for ex in batch], device=device)
        return F.cross_entropy(forward(**inputs).logits.float(), targets, label_smoothing=cfg.label_smoothing)

    return loss


def _write_adapter(model, tokenizer, splits: Splits, cfg: TrainConfig, model_dir: Path, metrics: dict, run_id: str | None) -> Path:
    """Write the adapter (or full model) folder atomically: build it next to the target, then rename."""
    with atomic_folder(cfg.adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / names.LABEL_MAP_FILE).write_text(json.dumps({"labels": splits.labels}, indent=2))
        resolved = cfg.to_dict() | {"model": str(model_dir.resolve()), "labels": splits.labels, "learning_rate": cfg.lr}
        (tmp / names.TRAINING_CONFIG_FILE).write_text(json.dumps(resolved, indent=2))
        (tmp / names.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        write_jsonl(tmp / names.HELDOUT_FILE, splits.test)
        tracking.write_link(tmp, run_id, tracking.resolve_uri(cfg.tracking_uri))
    return cfg.adapter_dir


def _build(cfg: TrainConfig, model_dir: Path, splits: Splits, tokenizer, device: torch.device) -> torch.nn.Module:
    model = load_classifier(model_dir, splits.labels, tokenizer.pad_token_id)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return prepare(model, model_dir, cfg).to(device)


def train(cfg: TrainConfig, dist: Dist | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` with ``cfg.method`` on ``cfg.data``; write ``runs/NAME/adapter/``.

    Under torchrun (``dist`` from ``Dist.from_env()``) every process trains on its share of each
    epoch with gradients averaged (DDP), evaluations are gathered from all ranks, the early-stopping
    and time-budget decisions are shared, and only rank 0 writes checkpoints and the adapter.
    """
    dist = dist or Dist()
    if cfg.task == "causal-lm":
        from training.causal_train import train_causal

        return train_causal(cfg, dist)
    if cfg.adapter_dir.exists() and not cfg.overwrite:
        raise ConfigError(f"{cfg.adapter_dir} already exists; pass --overwrite to replace it, or choose another --name")
    device = torch.device("cuda" if torch.cuda.is_available() and not dist.enabled else "cpu")
    model_dir = resolve_model_dir(cfg.model)
    precision = check_before_training(cfg, model_dir, device)
    if cfg.threads or dist.enabled:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist.local_world_size))
    dist.start()
    set_seed(cfg.seed)
    splits = load_splits(cfg)
    log.info("data: %s", splits.summary())
    tokenizer = load_tokenizer(model_dir)
    model = _build(cfg, model_dir, splits, tokenizer, device)
    validation = splits.validation[: cfg.eval_max_examples] if cfg.eval_max_examples else splits.validation
    log.info("evaluating the untuned model on %d test examples", len(splits.test))
    before = _evaluate(model, tokenizer, splits.test, splits.labels, cfg, dist)
    steps = total_steps(cfg, len(splits.train), dist)
    loss = _classifier_loss(dist.wrap(model), tokenizer, splits.labels, cfg, precision.device)
    step_fn = OptimizerStep.build(model, loss, cfg, model_depth(model_dir), steps, precision)

    def validate(model) -> dict:
        val = _evaluate(model, tokenizer, validation, splits.labels, cfg, dist)
        return {"accuracy": val["accuracy"], "macro_f1": val["macro_f1"], "val_loss": val["loss"], "auc": val["auc"]}

    progress, losses, loop = training_loop(model, step_fn, splits.train, validate, cfg, dist, steps)
    model.load_state_dict(progress.best_state, strict=False)
    log.info("restored the best checkpoint (step %d); evaluating on %d test examples", progress.best["step"], len(splits.test))
    after = _evaluate(model, tokenizer, splits.test, splits.labels, cfg, dist)
    window = max(1, min(20, len(losses) // 4))
    metrics = {
        "method": cfg.method, "precision": precision.name, "learning_rate": cfg.lr,
        "test_before": before, "test_after": after, "best_validation": progress.best,
        **loop,
        "trainable_parameters": count_parameters(model)[0], "total_parameters": count_parameters(model)[1],
        "processes": dist.world_size,
        "train_loss_first": sum(losses[:window]) / window, "train_loss_last": sum(losses[-window:]) / window,
        "splits": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "cleaning": splits.cleaning,
        "history": progress.history,
    }
    run_id = None
    if dist.is_main:
        run_id = tracking.log_run("training", cfg.name, params=cfg.to_dict() | {"learning_rate": cfg.lr},
                                  metrics={k: v for k, v in metrics.items() if k != "history"},
                                  series=progress.history, documents={names.METRICS_FILE: metrics}, uri=cfg.tracking_uri)
        _write_adapter(model, tokenizer, splits, cfg, model_dir, metrics, run_id)
    dist.close()
    return TrainResult(cfg.adapter_dir, metrics, progress.history, run_id)
