"""The training stage's configuration: one dataclass, mirrored one to one by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.cli import config_from_dict, config_to_dict
from training.errors import ConfigError


@dataclass
class TrainConfig:
    """LoRA fine-tuning of a sequence classifier. Output: ``runs/NAME/adapter/``."""

    name: str = "demo"
    """Run name: everything is written under runs_dir/NAME/."""
    runs_dir: Path = Path("runs")
    """Folder holding the runs."""
    model: Path | None = None
    """Local Hugging Face model folder; None: the bundled all-MiniLM-L6-v2 (BERT)."""
    data: Path | None = None
    """CSV or JSONL file with a text and a label column; None: the bundled Rotten Tomatoes reviews."""
    validation_data: Path | None = None
    """Optional separate validation file (same columns); None: split from data."""
    test_data: Path | None = None
    """Optional separate test file (same columns); None: split from data."""
    text_column: str = "text"
    """Name of the text column in data files."""
    label_column: str = "label"
    """Name of the label column in data files."""
    validation_fraction: float = 0.1
    """Fraction of the data held out for validation (stratified by label)."""
    test_fraction: float = 0.1
    """Fraction of the data held out for the final test (stratified by label)."""
    max_examples: int | None = None
    """Use a stratified sample of at most this many examples before splitting (None: all)."""
    max_length: int = 64
    """Tokens per example after truncation; the served model truncates the same way."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA branch."""
    target_modules: tuple[str, ...] = ()
    """Modules that get LoRA adapters; empty: the per-architecture default (BERT: query,value)."""
    learning_rate: float = 1e-3
    """Peak learning rate (linear warm-up over 5 % of the steps, then linear decay)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 16
    """Training batch size."""
    eval_batch_size: int = 64
    """Batch size for validation and test passes."""
    epochs: float = 1.0
    """Passes over the training split (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: from epochs)."""
    eval_every: int = 100
    """Evaluate on the validation split every N steps (and at the end)."""
    eval_max_examples: int | None = 512
    """Periodic evaluations use at most this many validation examples (None: all)."""
    patience: int = 3
    """Early stopping: stop after this many evaluations without a better validation accuracy."""
    time_budget_s: float | None = None
    """Wall-clock budget for the training loop in seconds (None: no budget)."""
    seed: int = 42
    """Seed for the split, the head's initialisation, dropout and shuffling."""
    threads: int | None = None
    """torch intra-op threads (None: torch's default)."""
    overwrite: bool = False
    """Replace an existing runs_dir/NAME/adapter instead of refusing."""

    def __post_init__(self) -> None:
        for name in ("runs_dir", "model", "data", "validation_data", "test_data"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(m.strip() for m in self.target_modules.split(",") if m.strip())
        self.target_modules = tuple(self.target_modules)
        problems: list[str] = []
        if not self.name or "/" in self.name:
            problems.append(f"name {self.name!r} must be a non-empty folder name")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name} must lie in [0, 1), got {value}")
        if self.validation_fraction + self.test_fraction >= 0.9:
            problems.append("validation_fraction + test_fraction must leave at least 10 % for training")
        if self.validation_data is None and self.validation_fraction == 0:
            problems.append("validation_fraction is 0 and no validation_data is given: early stopping needs a validation split")
        if self.test_data is None and self.test_fraction == 0:
            problems.append("test_fraction is 0 and no test_data is given: metrics need a test split")
        for name in ("max_length", "lora_r", "batch_size", "eval_batch_size", "eval_every", "patience"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_examples", "max_steps", "eval_max_examples", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or None, got {value}")
        if self.lora_alpha <= 0:
            problems.append(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.epochs <= 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            problems.append(f"time_budget_s must be > 0 or None, got {self.time_budget_s}")
        if problems:
            raise ConfigError("invalid training config:\n  - " + "\n  - ".join(problems))

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data, ConfigError, "training")
