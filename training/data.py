"""Loading and splitting labelled text: the bundled reviews or a user's CSV/JSONL."""

from __future__ import annotations

import bz2
import csv
import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from training.bundled import bundled_data_file
from training.clean import CleaningReport, clean_text
from training.config import TrainConfig
from training.errors import DataError

log = logging.getLogger(__name__)

BUNDLED_LABELS = {"rotten": "negative", "fresh": "positive"}
"""The bundled corpus's categories, renamed to sentiment labels ("plot" rows are not reviews)."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    labels: list[str]
    """Sorted label names: index i is class id i."""
    cleaning: dict | None = None
    """What ``--clean-text`` did (``CleaningReport`` counts); None when it was off."""

    def summary(self) -> str:
        return f"{len(self.train)} train / {len(self.validation)} validation / {len(self.test)} test, labels {self.labels}"


def read_bundled() -> list[Example]:
    """The Rotten Tomatoes review snippets (fresh -> positive, rotten -> negative)."""
    with bz2.open(bundled_data_file(), "rt", encoding="utf-8", newline="") as f:
        return [
            Example(row["text"], BUNDLED_LABELS[row["category"]])
            for row in csv.DictReader(f)
            if row["category"] in BUNDLED_LABELS
        ]


def read_file(path: Path, text_column: str, label_column: str) -> list[Example]:
    """Read a CSV or JSONL file (chosen by suffix) with the given text and label columns."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".bz2" else path.suffix
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        if suffix.startswith(".jsonl") or suffix.startswith(".json"):
            rows = []
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno} is not valid JSON ({e.msg}); expected one object per line") from e
            columns = set().union(*(r.keys() for r in rows)) if rows else set()
        elif suffix.startswith(".csv") or suffix.startswith(".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix.startswith(".tsv") else ",")
            rows = list(reader)
            columns = set(reader.fieldnames or [])
        else:
            raise DataError(f"data file {path} has an unknown format {path.suffix!r}; expected .csv, .tsv or .jsonl")
    if not rows:
        raise DataError(f"data file {path} holds no rows")
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise DataError(
            f"data file {path} is missing column(s) {missing} (found: {sorted(columns)}); "
            "set --text-column / --label-column to the right names"
        )
    examples = [
        Example(str(r[text_column]), str(r[label_column]))
        for r in rows
        if r.get(text_column) not in (None, "") and r.get(label_column) not in (None, "")
    ]
    if not examples:
        raise DataError(f"data file {path} has no row with both a non-empty {text_column!r} and {label_column!r}")
    return examples


def dedupe(examples: list[Example]) -> list[Example]:
    """Keep the first occurrence of each text (a text seen twice must not sit in train and test)."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.text not in seen:
            seen.add(ex.text)
            out.append(ex)
    if len(out) < len(examples):
        log.info("dropped %d duplicate texts", len(examples) - len(out))
    return out


def clean_examples(examples: list[Example]) -> tuple[list[Example], CleaningReport]:
    """Clean every text, drop the ones left empty, then de-duplicate; count each step."""
    report = CleaningReport(texts_in=len(examples))
    cleaned = []
    for ex in examples:
        text = clean_text(ex.text, report)
        if text:
            cleaned.append(Example(text, ex.label))
        else:
            report.emptied_and_dropped += 1
    out = dedupe(cleaned)
    report.duplicates_dropped = len(cleaned) - len(out)
    report.texts_out = len(out)
    log.info("text cleaning: %s", report.to_dict())
    return out, report


def stratified_split(
    examples: list[Example], fractions: tuple[float, ...], seed: int
) -> list[list[Example]]:
    """Split into len(fractions) + 1 parts (the rest first), label by label, deterministically."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    rng = random.Random(seed)
    parts: list[list[Example]] = [[] for _ in range(len(fractions) + 1)]
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        start = 0
        for i, frac in enumerate(fractions, 1):
            n = round(len(group) * frac)
            parts[i].extend(group[start : start + n])
            start += n
        parts[0].extend(group[start:])
    for part in parts:
        rng.shuffle(part)
    return parts


def load_splits(cfg: TrainConfig) -> Splits:
    """Read, dedupe, sample and split the data set; check the labels fit a classifier."""
    source = cfg.data or "bundled Rotten Tomatoes reviews"
    examples = read_bundled() if cfg.data is None else read_file(cfg.data, cfg.text_column, cfg.label_column)
    cleaning = None
    if cfg.clean_text:
        examples, report = clean_examples(examples)
        cleaning = report.to_dict()
    else:
        examples = dedupe(examples)
    if cfg.max_examples is not None and len(examples) > cfg.max_examples:
        examples = stratified_split(examples, (cfg.max_examples / len(examples),), cfg.seed)[1]
    fractions = (
        cfg.validation_fraction if cfg.validation_data is None else 0.0,
        cfg.test_fraction if cfg.test_data is None else 0.0,
    )
    train, validation, test = stratified_split(examples, fractions, cfg.seed)
    if cfg.validation_data is not None:
        validation = read_file(cfg.validation_data, cfg.text_column, cfg.label_column)
    if cfg.test_data is not None:
        test = read_file(cfg.test_data, cfg.text_column, cfg.label_column)
    labels = sorted({ex.label for ex in train})
    if len(labels) < 2:
        raise DataError(f"{source} has {len(labels)} distinct label(s) in training ({labels}); a classifier needs at least 2")
    for split_name, split in (("validation", validation), ("test", test)):
        if not split:
            raise DataError(f"the {split_name} split of {source} is empty; give more data or a larger {split_name}_fraction")
        unseen = sorted({ex.label for ex in split} - set(labels))
        if unseen:
            raise DataError(
                f"label(s) {unseen} appear in the {split_name} split but never in training (training labels: {labels})"
            )
    return Splits(train, validation, test, labels, cleaning)


def write_jsonl(path: Path, examples: list[Example]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"text": ex.text, "label": ex.label}, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Example]:
    return read_file(path, "text", "label")
