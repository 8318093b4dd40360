"""The training loop: LoRA fine-tuning with periodic evaluation, early stopping and a time budget."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup, set_seed

from training.config import TrainConfig
from training.data import Example, Splits, load_splits, write_jsonl
from training.distributed import Dist
from training.errors import ConfigError
from training.files import atomic_folder
from training.metrics import classification_metrics, encode, torch_logits
from training.model import add_lora, load_classifier, load_tokenizer, resolve_model_dir

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced: where the adapter is and how well it does."""

    adapter_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


def _evaluate(model, tokenizer, examples: list[Example], label_ids: dict[str, int], cfg: TrainConfig, dist: Dist) -> dict:
    """Metrics over ``examples``; each process predicts its share, the predictions are gathered."""
    mine = examples[dist.rank :: dist.world_size]
    logits = torch_logits(model, tokenizer, [ex.text for ex in mine], cfg.max_length, cfg.eval_batch_size)
    pairs = dist.gather([(label_ids[ex.label], int(p)) for ex, p in zip(mine, logits.argmax(-1).tolist(), strict=True)])
    return classification_metrics([t for t, _ in pairs], [p for _, p in pairs], len(label_ids))


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


class _Progress:
    """Validation history, the best weights so far (LoRA and head only), and evaluations since the best."""

    def __init__(self, model: torch.nn.Module):
        self.best = {"accuracy": -1.0, "step": 0}
        self.best_state = self._trainable(model)
        self.history: list[dict] = []
        self.stale = 0

    @staticmethod
    def _trainable(model: torch.nn.Module) -> dict:
        return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k or "modules_to_save" in k}

    def record(self, model: torch.nn.Module, entry: dict) -> bool:
        """Add an evaluation; keep the weights if it is the best so far. True when it improved."""
        self.history.append(entry)
        if entry["accuracy"] > self.best["accuracy"]:
            self.best = {"accuracy": entry["accuracy"], "macro_f1": entry["macro_f1"], "step": entry["step"]}
            self.best_state = self._trainable(model)
            self.stale = 0
            return True
        self.stale += 1
        return False


def _step(forward, tokenizer, batch: list[Example], label_ids: dict[str, int], cfg: TrainConfig, params, optimizer,
          scheduler, dist: Dist) -> float:
    """One optimizer step on ``batch``; the loss averaged over all processes."""
    enc = encode(tokenizer, [ex.text for ex in batch], cfg.max_length)
    inputs = {k: torch.from_numpy(v) for k, v in enc.items()}
    labels = torch.tensor([label_ids[ex.label] for ex in batch])
    loss = forward(**inputs, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return dist.mean(loss.item())


def _write_adapter(model, tokenizer, splits: Splits, cfg: TrainConfig, model_dir: Path, metrics: dict) -> Path:
    """Write the adapter folder atomically: build it next to the target, then rename."""
    with atomic_folder(cfg.adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "label_map.json").write_text(json.dumps({"labels": splits.labels}, indent=2))
        resolved = cfg.to_dict() | {"model": str(model_dir.resolve()), "labels": splits.labels}
        (tmp / "training_config.json").write_text(json.dumps(resolved, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_jsonl(tmp / "heldout.jsonl", splits.test)
    return cfg.adapter_dir


def train(cfg: TrainConfig, dist: Dist | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` with LoRA on ``cfg.data``; write ``runs/NAME/adapter/``.

    Under torchrun (``dist`` from ``Dist.from_env()``) every process trains on its share of each
    epoch with gradients averaged (DDP), evaluations are gathered from all ranks, the early-stopping
    and time-budget decisions are shared, and only rank 0 writes checkpoints and the adapter.
    """
    dist = dist or Dist()
    if cfg.adapter_dir.exists() and not cfg.overwrite:
        raise ConfigError(f"{cfg.adapter_dir} already exists; pass --overwrite to replace it, or choose another --name")
    if cfg.threads or dist.enabled:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // dist.local_world_size))
    dist.start()
    set_seed(cfg.seed)
    splits = load_splits(cfg)
    log.info("data: %s", splits.summary())
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    label_ids = {label: i for i, label in enumerate(splits.labels)}
    model = add_lora(load_classifier(model_dir, splits.labels, tokenizer.pad_token_id), model_dir, cfg)
    forward = dist.wrap(model)  # DDP averages the gradients across processes
    validation = splits.validation[: cfg.eval_max_examples] if cfg.eval_max_examples else splits.validation

    log.info("evaluating the untuned model on %d test examples", len(splits.test))
    before = _evaluate(model, tokenizer, splits.test, label_ids, cfg, dist)
    steps_per_epoch = math.ceil(len(splits.train) / (cfg.batch_size * dist.world_size))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total_steps // 20), total_steps)

    progress = _Progress(model)
    losses: list[float] = []
    seen, stop_reason = 0, "completed"
    started = time.monotonic()
    model.train()
    bar = tqdm(total=total_steps, unit="step", desc="train", mininterval=1.0 if sys.stderr.isatty() else 10.0, disable=not dist.is_main)
    batches = _batches(splits.train, cfg.batch_size, cfg.seed, dist)
    step = 0
    for step in range(1, total_steps + 1):
        epoch, batch = next(batches)
        losses.append(_step(forward, tokenizer, batch, label_ids, cfg, params, optimizer, scheduler, dist))
        seen += len(batch) * dist.world_size
        elapsed = time.monotonic() - started
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", ex_s=f"{seen / elapsed:.1f}", epoch=epoch, refresh=False)
        out_of_time = dist.any(cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s)
        if step % cfg.eval_every == 0 or step == total_steps or out_of_time:
            val = _evaluate(model, tokenizer, validation, label_ids, cfg, dist)
            log.info("step %d: loss %.4f, validation accuracy %.4f, macro-F1 %.4f", step, losses[-1], val["accuracy"], val["macro_f1"])
            improved = progress.record(model, {"step": step, "epoch": epoch, "loss": losses[-1], "elapsed_s": round(elapsed, 1), **val})
            if improved and dist.is_main:
                model.save_pretrained(cfg.run_dir / "checkpoints" / "best")
            if progress.stale >= cfg.patience:
                stop_reason = f"early stopping: no better validation accuracy in {cfg.patience} evaluations"
                break
        if out_of_time:
            stop_reason = f"time budget of {cfg.time_budget_s:.0f} s reached"
            break
    bar.close()
    train_seconds = time.monotonic() - started
    model.load_state_dict(progress.best_state, strict=False)
    log.info("restored the best checkpoint (step %d); evaluating on %d test examples", progress.best["step"], len(splits.test))
    after = _evaluate(model, tokenizer, splits.test, label_ids, cfg, dist)
    window = max(1, min(20, len(losses) // 4))
    metrics = {
        "test_before": before,
        "test_after": after,
        "best_validation": progress.best,
        "steps": step,
        "stop_reason": stop_reason,
        "train_seconds": round(train_seconds, 1),
        "examples_per_second": round(seen / max(train_seconds, 1e-9), 1),
        "trainable_parameters": model.get_nb_trainable_parameters()[0],
        "processes": dist.world_size,
        "train_loss_first": sum(losses[:window]) / window,
        "train_loss_last": sum(losses[-window:]) / window,
        "splits": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        "history": progress.history,
    }
    if dist.is_main:
        _write_adapter(model, tokenizer, splits, cfg, model_dir, metrics)
    dist.close()
    return TrainResult(cfg.adapter_dir, metrics, progress.history)
