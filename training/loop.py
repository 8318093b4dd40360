"""The training loop every task shares: optimizer steps over shuffled batches, periodic validation, early
stopping and the time budget (``training_loop``), and what a run returns (``TrainResult``).

``training.train`` (classifiers) and ``training.causal_train`` (causal LMs) each bring their loss and their
validation; the loop, the optimizer step and the checks before training are the same.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from training.config import TrainConfig
from training.distributed import Dist
from training.errors import ConfigError
from training.methods import model_depth
from training.optim import Precision, make_optimizer
from training.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced: where the adapter (or full model) is and how well it does."""

    adapter_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None
    """The MLflow run id of this training run (None when tracking is off)."""


def _batches(examples: list, batch_size: int, seed: int, dist: Dist):
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


def check_before_training(cfg: TrainConfig, model_dir: Path, device: torch.device) -> Precision:
    """The checks that need the model or the hardware, done before any data or weights load."""
    if cfg.method == "freeze":
        depth = model_depth(model_dir)
        if cfg.freeze_layers > depth:
            raise ConfigError(f"freeze_layers {cfg.freeze_layers} is beyond the depth of {model_dir} "
                              f"({depth} layers); expected 0..{depth}")
    return Precision.resolve(cfg, device)


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
