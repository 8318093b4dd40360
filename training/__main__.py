"""``python -m training``: LoRA fine-tuning; flags mirror ``training.config.TrainConfig``."""

from __future__ import annotations

import logging
import sys

from training.cli import parse_config
from training.config import TrainConfig
from training.distributed import Dist
from training.errors import TrainingError
from training.train import train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(TrainConfig, argv, "python -m training", "Fine-tune a Hugging Face model with LoRA (peft) on labelled text.")
        dist = Dist.from_env()  # torchrun's RANK / WORLD_SIZE, read once here
        result = train(cfg, dist)
    except (TrainingError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not dist.is_main:
        return 0
    before, after = result.metrics["test_before"], result.metrics["test_after"]
    print(f"\nadapter: {result.adapter_dir}")
    print(f"stopped: {result.metrics['stop_reason']} after {result.metrics['steps']} steps, {result.metrics['train_seconds']} s")
    print(f"test accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}, macro-F1 {before['macro_f1']:.4f} -> {after['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
