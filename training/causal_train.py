"""Fine-tuning a causal LM (``--task causal-lm``): the loss on the reference tokens only, scored by generation.

The shared machinery is the classifier's (``training.train``: the optimizer step, the loop with periodic
validation, early stopping and the time budget; ``training.methods``; MLflow tracking); what is its own:

- data: prompts rendered with the chat template and their references (``training.causal_data``);
- loss: cross-entropy of the reference tokens and the EOS after them, prompt tokens masked;
- validation: that loss on ``eval_max_examples`` validation examples (early stopping on ``val_loss``);
- test, before and after: greedy ROUGE-L, BLEU-4, exact / first-word match, and the references' perplexity
  on the first ``generation_examples`` test examples (``training.causal_eval``).

Output ``runs/NAME/adapter/``: the adapter (or whole model), the tokenizer, ``training_config.json`` (with
``task``), ``metrics.json``, ``heldout.jsonl`` (the scored test examples with their rendered prompts).
"""

from __future__ import annotations

import json
import logging
import time

import torch
from transformers import set_seed

from training.causal_data import GenExample, load_gen_splits, render_prompt, target_text, write_gen_jsonl
from training.causal_eval import lm_batch, lm_loss, reference_nll, score
from training.causal_model import load_causal_lm, load_causal_tokenizer, resolve_causal_model_dir
from training.config import TrainConfig
from training.distributed import Dist
from training.errors import ConfigError
from training.gen_metrics import perplexity
from training.loop import OptimizerStep, TrainResult, check_before_training, total_steps, training_loop
from training.methods import count_parameters, model_depth, prepare
from tunestack import names, tracking
from tunestack.files import atomic_folder

log = logging.getLogger(__name__)

EVAL_BATCH = 8
"""Prompts per forward pass when scoring: a generation batch pads every prompt to its longest and runs until
its longest output ends, so small batches waste less of a CPU."""


def _texts(tokenizer, examples: list[GenExample]) -> tuple[list[str], list[str]]:
    return [render_prompt(tokenizer, ex) for ex in examples], [ex.reference for ex in examples]


def _lm_loss_fn(forward: torch.nn.Module, tokenizer, device: torch.device):
    def loss(batch: list[GenExample]) -> torch.Tensor:
        prompts = [render_prompt(tokenizer, ex) for ex in batch]
        return lm_loss(forward, lm_batch(tokenizer, prompts, [target_text(tokenizer, ex) for ex in batch]).to(device))

    return loss


def _validator(tokenizer, examples: list[GenExample], batch_size: int):
    prompts = [render_prompt(tokenizer, ex) for ex in examples]
    targets = [target_text(tokenizer, ex) for ex in examples]

    def validate(model) -> dict:
        nll, tokens = reference_nll(model, tokenizer, prompts, targets, batch_size)
        return {"val_loss": nll / tokens, "val_perplexity": perplexity(nll, tokens)}

    return validate


def _score(model, tokenizer, examples: list[GenExample], cfg: TrainConfig) -> dict:
    started = time.monotonic()
    prompts, references = _texts(tokenizer, examples)
    result = score(model, tokenizer, prompts, references, cfg.max_new_tokens, min(EVAL_BATCH, cfg.eval_batch_size))
    result["seconds"] = round(time.monotonic() - started, 1)
    log.info("ROUGE-L %.2f, BLEU-4 %.2f, perplexity %.3f, first-word match %.3f on %d examples (%.0f s)",
             result["rouge_l"], result["bleu4"], result["perplexity"], result["first_word_match"], len(examples),
             result["seconds"])
    return result


def _write_adapter(model, tokenizer, scored: list[GenExample], cfg: TrainConfig, model_dir, metrics: dict,
                   run_id: str | None):
    with atomic_folder(cfg.adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        resolved = cfg.to_dict() | {"model": str(model_dir.resolve()), "learning_rate": cfg.lr}
        (tmp / names.TRAINING_CONFIG_FILE).write_text(json.dumps(resolved, indent=2))
        (tmp / names.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        write_gen_jsonl(tmp / names.HELDOUT_FILE, tokenizer, scored)
        tracking.write_link(tmp, run_id, tracking.resolve_uri(cfg.tracking_uri))
    return cfg.adapter_dir


def train_causal(cfg: TrainConfig, dist: Dist) -> TrainResult:
    """Fine-tune a causal LM on prompts and references; write ``runs/NAME/adapter/`` (one process: no torchrun)."""
    if dist.enabled:
        raise ConfigError("task causal-lm trains in one process; run it without torchrun (NPROC=1)")
    if cfg.adapter_dir.exists() and not cfg.overwrite:
        raise ConfigError(f"{cfg.adapter_dir} already exists; pass --overwrite to replace it, or choose another --name")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = resolve_causal_model_dir(cfg.model, cfg.run_dir)
    precision = check_before_training(cfg, model_dir, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    tokenizer = load_causal_tokenizer(model_dir)
    splits = load_gen_splits(cfg, tokenizer)
    log.info("data: %s", splits.summary())
    model = load_causal_lm(model_dir)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = prepare(model, model_dir, cfg).to(device)
    scored = splits.test[: cfg.generation_examples]
    validation = splits.validation[: cfg.eval_max_examples] if cfg.eval_max_examples else splits.validation
    log.info("scoring the untuned model on %d test examples", len(scored))
    before = _score(model, tokenizer, scored, cfg)
    steps = total_steps(cfg, len(splits.train), dist)
    step_fn = OptimizerStep.build(model, _lm_loss_fn(model, tokenizer, device), cfg, model_depth(model_dir), steps,
                                  precision)
    validate = _validator(tokenizer, validation, min(EVAL_BATCH, cfg.eval_batch_size))
    progress, losses, loop = training_loop(model, step_fn, splits.train, validate, cfg, dist, steps)
    model.load_state_dict(progress.best_state, strict=False)
    log.info("restored the best checkpoint (step %d); scoring on %d test examples", progress.best["step"], len(scored))
    after = _score(model, tokenizer, scored, cfg)
    window = max(1, min(20, len(losses) // 4))
    trainable, total = count_parameters(model)
    metrics = {
        "task": cfg.task, "method": cfg.method, "precision": precision.name, "learning_rate": cfg.lr,
        "test_before": before, "test_after": after, "best_validation": progress.best, **loop,
        "trainable_parameters": trainable, "total_parameters": total, "processes": 1,
        "train_loss_first": sum(losses[:window]) / window, "train_loss_last": sum(losses[-window:]) / window,
        "splits": {"train": len(splits.train), "validation": len(validation), "test": len(scored)},
        "history": progress.history,
    }
    run_id = tracking.log_run("training", cfg.name, params=cfg.to_dict() | {"learning_rate": cfg.lr},
                              metrics={k: v for k, v in metrics.items() if k != "history"}, series=progress.history,
                              documents={"metrics.json": metrics}, uri=cfg.tracking_uri)
    _write_adapter(model, tokenizer, scored, cfg, model_dir, metrics, run_id)
    return TrainResult(cfg.adapter_dir, metrics, progress.history, run_id)
