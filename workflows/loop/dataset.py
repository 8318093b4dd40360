"""A retrain cycle's data set: production feedback joined to its inputs, cleaned and deduplicated as training
cleans (``training.data.clean_examples``), split by time and mixed with the original training data.

* each kept request's texts with their feedback labels (a request whose label count differs from its text count
  is dropped and counted);
* cleaned and deduplicated in answer order (the first, oldest occurrence of a text is kept);
* split by time: the newest ``eval_fraction`` evaluates the candidate against production (the offline gate),
  the older rest trains; a share of it (``validation_fraction``, the newest of it) stops training early;
* mixed with ``original_share`` of original training examples (texts not in the new data), so the new training
  set is that share original: the guides' guard against catastrophic forgetting.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from experiments.store.loop_tables import LabelledInput
from training.config import TrainConfig
from training.data import Example, Splits, clean_examples, load_splits, read_jsonl, write_jsonl
from tunestack.layout import RunLayout


@dataclass
class LoopData:
    """The three parts of a cycle's data set, and what building it did."""

    train: list[Example]
    validation: list[Example]
    evaluate: list[Example]
    stats: dict = field(default_factory=dict)

    def write(self, folder: Path) -> dict[str, str]:
        """Write train/validation/evaluate JSONL files under ``folder``; their paths by part."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for part in ("train", "validation", "evaluate"):
            paths[part] = str(folder / f"{part}.jsonl")
            write_jsonl(Path(paths[part]), getattr(self, part))
        return paths


def feedback_examples(rows: Sequence[LabelledInput]) -> tuple[list[Example], int]:
    """Every (text, label) pair of the kept inputs, oldest answer first; and how many requests were dropped
    because their feedback did not give one label per text."""
    out, dropped = [], 0
    for row in sorted(rows, key=lambda r: (r.at, r.request_id)):
        if len(row.labels) != len(row.texts):
            dropped += 1
            continue
        out.extend(Example(t, lab) for t, lab in zip(row.texts, row.labels, strict=True))
    return out, dropped


def production_splits(run: Path) -> Splits:
    """The production run's splits, rebuilt from its resolved training config (same data, seed, split)."""
    resolved = json.loads(RunLayout(run).training_config.read_text())
    known = {f.name for f in fields(TrainConfig)}
    return load_splits(TrainConfig.from_dict({k: v for k, v in resolved.items() if k in known} | {"overwrite": True}))


def original_training(run: Path) -> list[Example]:
    """The production run's training split (``production_splits``)."""
    return production_splits(run).train


def original_heldout(run: Path) -> list[Example]:
    """The production run's held-out set (``merged/heldout.jsonl``)."""
    return read_jsonl(RunLayout(run).heldout)


def build(rows: Sequence[LabelledInput], original: Sequence[Example], *, eval_fraction: float,
          validation_fraction: float, original_share: float, seed: int = 0) -> LoopData:
    """The cycle's data set from the kept inputs with feedback and the original training examples."""
    raw, dropped = feedback_examples(rows)
    cleaned, report = clean_examples(raw)
    n_eval = max(1, round(len(cleaned) * eval_fraction)) if cleaned else 0
    older, evaluate = cleaned[: len(cleaned) - n_eval], cleaned[len(cleaned) - n_eval:]
    n_val = max(1, round(len(older) * validation_fraction)) if older else 0
    new_train, validation = older[: len(older) - n_val], older[len(older) - n_val:]
    seen = {ex.text for ex in cleaned}
    pool = [ex for ex in original if ex.text not in seen]
    want = round(len(new_train) * original_share / (1.0 - original_share)) if original_share > 0 else 0
    rng = random.Random(seed)
    mixed = rng.sample(pool, min(want, len(pool)))
    train = new_train + mixed
    rng.shuffle(train)
    stats = {"requests": len(rows), "requests_dropped": dropped, "feedback_examples": len(raw),
             "cleaning": report.to_dict(), "train_new": len(new_train), "train_original": len(mixed),
             "validation": len(validation), "evaluate": len(evaluate),
             "original_share": len(mixed) / len(train) if train else 0.0,
             "labels": sorted({e.label for e in cleaned})}
    return LoopData(train, validation, evaluate, stats)


