"""``python -m training``: fine-tuning (LoRA by default); flags mirror ``training.config.TrainConfig``."""

from __future__ import annotations

import logging
import sys

from training.config import TrainConfig
from training.distributed import Dist
from training.errors import TrainingError
from training.train import train
from tunestack.cli import Command, Commands, parse_dataclass


def train_main(argv: list[str]) -> int:
    try:
        cfg = parse_dataclass(TrainConfig, argv, "python -m training", "Fine-tune a Hugging Face sequence classifier on "
                              "labelled text, or a causal LM on prompts and references (--task causal-lm), with "
                              "--method lora|full|freeze|ia3|loha; `python -m workflows compare --help` compares the "
                              "methods.", errors=())
        dist = Dist.from_env()  # torchrun's RANK / WORLD_SIZE, read once here
        result = train(cfg, dist)
    except (TrainingError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not dist.is_main:
        return 0
    before, after = result.metrics["test_before"], result.metrics["test_after"]
    tracked = f", MLflow run {result.run_id}" if result.run_id else ""
    print(f"\nadapter: {result.adapter_dir} (task {cfg.task}, method {result.metrics['method']}{tracked})")
    print(f"stopped: {result.metrics['stop_reason']} after {result.metrics['steps']} steps, {result.metrics['train_seconds']} s")
    if cfg.task == "causal-lm":
        print(f"on {after['examples']} held-out prompts, before -> after fine-tuning:")
        for key, name in (("rouge_l", "ROUGE-L"), ("bleu4", "BLEU-4"), ("perplexity", "perplexity"),
                          ("first_word_match", "first-word match"), ("exact_match", "exact match")):
            print(f"  {name:<17} {before[key]:8.3f} -> {after[key]:8.3f}")
        return 0
    print(f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}, macro-F1 {before['macro_f1']:.4f} -> {after['macro_f1']:.4f}"
          + (f", ROC-AUC {after['auc']:.4f}" if after["auc"] is not None else ""))
    return 0


COMMANDS = Commands("python -m training", "Fine-tuning.", {
    "train": Command(train_main, "fine-tune one method (the default: `python -m training --method lora ...`)"),
}, default="train")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return COMMANDS(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
