"""The training loop: any method of ``training.methods`` with periodic evaluation, early stopping and a time budget."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import set_seed

from training.config import TrainConfig
from training.data import Example, Splits, load_splits, write_jsonl
from training.distributed import Dist
from training.errors import ConfigError
from training.methods import count_parameters, model_depth, prepare
from training.metrics import encode, logit_metrics, torch_logits
from training.model import load_classifier, load_tokenizer, resolve_model_dir
from training.optim import Precision, make_optimizer
from training.progress import Progress
from tunestack import names, tracking
from tunestack.files import atomic_folder

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced: where the adapter (or full model) is and how well it does."""

    adapter_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None
    """The MLflow run id of this training run (None when tracking is off)."""


def _evaluate(model, tokenizer, examples: list[Example], labels: list[str], cfg: TrainConfig, dist: Dist) -> dict:
    """Metrics over ``examples``; each process predicts its share, the predictions are gathered."""
    mine = examples[dist.rank :: dist.world_size]
    logits = torch_logits(model, tokenizer, [ex.text for ex in mine], cfg.max_length, cfg.eval_batch_size)
    pairs = dist.gather([(labels.index(ex.label), row.tolist()) for ex, row in zip(mine, logits, strict=True)])
    return logit_metrics([t for t, _ in pairs], np.asarray([r for _, r in pairs], dtype=np.float32), labels)


def _batches(examples: list[Example], batch_size: int, seed: int, dist: Dist):
    """Endless shuffled batches, reshuffled every epoch from the seed; each process takes its stride."""
    epoch = 0
    while True:
        order = list(range(len(examples)))
        random.Random(seed + epoch).shuffle(order)
        order = order[dist.rank :: dist.world_size]
        for start in range(0, len(order), batch_size):
            yield epoch, [examples[i] for i in order[start : start + batch_size]]
        epoch += 1


@dataclass
class OptimizerStep:
    """Everything one optimizer step uses besides the batches; ``loss(batch)`` is a micro-batch's mean loss."""

    loss: Callable[[list], torch.Tensor]
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: object
    precision: Precision
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, model: torch.nn.Module, loss: Callable[[list], torch.Tensor], cfg: TrainConfig, n_layers: int,
              total_steps: int, precision: Precision) -> OptimizerStep:
        """AdamW and its schedule over ``model``'s trainable parameters (``training.optim``)."""
        optimizer, scheduler = make_optimizer(model, cfg, n_layers, total_steps)
        return cls(loss, [p for p in model.parameters() if p.requires_grad], optimizer, scheduler, precision,
                   precision.scaler())

    def run(self, micro_batches: list[list], dist: Dist) -> float:
        """Accumulate gradients over ``micro_batches``, then one (scaled, clipped) optimizer step."""
        total = 0.0
        for batch in micro_batches:
            with self.precision.autocast():
                loss = self.loss(batch).float() / len(micro_batches)
            self.scaler.scale(loss).backward()
            total += loss.item()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return dist.mean(total)


def total_steps(cfg: TrainConfig, n_train: int, dist: Dist) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` over ``n_train`` examples."""
    steps_per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.gradient_accumulation_steps * dist.world_size))
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


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


def check_before_training(cfg: TrainConfig, model_dir: Path, device: torch.device) -> Precision:
    """The checks that need the model or the hardware, done before any data or weights load."""
    if cfg.method == "freeze":
        depth = model_depth(model_dir)
        if cfg.freeze_layers > depth:
            raise ConfigError(f"freeze_layers {cfg.freeze_layers} is beyond the depth of {model_dir} "
                              f"({depth} layers); expected 0..{depth}")
    return Precision.resolve(cfg, device)


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


def training_loop(model, step_fn: OptimizerStep, train_examples: list, validate: Callable[[torch.nn.Module], dict], cfg: TrainConfig,
                  dist: Dist, n_steps: int):
    """Optimizer steps with periodic evaluation until done, early-stopped or out of time.

    ``step_fn.run(micro_batches, dist)`` takes one optimizer step and returns its loss; ``validate(model)``
    returns the validation metrics (``cfg.early_stopping_metric`` among them) recorded in the history.
    """
    progress = Progress(model, cfg.early_stopping_metric)
    losses: list[float] = []
    seen, stop_reason, step = 0, "completed", 0
    started = time.monotonic()
    model.train()
    bar = tqdm(total=n_steps, unit="step", desc=f"train {cfg.method}", mininterval=1.0 if sys.stderr.isatty() else 10.0,
               disable=not dist.is_main)
    batches = _batches(train_examples, cfg.batch_size, cfg.seed, dist)
    for step in range(1, n_steps + 1):
        micro = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
        losses.append(step_fn.run([b for _, b in micro], dist))
        seen += sum(len(b) for _, b in micro) * dist.world_size
        elapsed = time.monotonic() - started
        epoch = micro[-1][0]
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", ex_s=f"{seen / elapsed:.1f}", epoch=epoch, refresh=False)
        out_of_time = dist.any(cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s)
        if step % cfg.eval_every == 0 or step == n_steps or out_of_time:
            val = validate(model)
            log.info("step %d: loss %.4f, validation %s", step, losses[-1],
                     ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)))
            entry = {"step": step, "epoch": epoch, "loss": losses[-1], "elapsed_s": round(elapsed, 1), **val}
            if progress.record(model, entry) and dist.is_main:
                model.save_pretrained(cfg.run_dir / "checkpoints" / "best")
            if progress.stale >= cfg.patience:
                stop_reason = f"early stopping: no better validation {cfg.early_stopping_metric} in {cfg.patience} evaluations"
                break
        if out_of_time:
            stop_reason = f"time budget of {cfg.time_budget_s:.0f} s reached"
            break
    bar.close()
    train_seconds = time.monotonic() - started
    loop = {"steps": step, "stop_reason": stop_reason, "train_seconds": round(train_seconds, 1),
            "seconds_per_step": round(train_seconds / max(step, 1), 4),
            "seconds_to_best": progress.best.get("elapsed_s"),
            "examples_per_second": round(seen / max(train_seconds, 1e-9), 1)}
    return progress, losses, loop
