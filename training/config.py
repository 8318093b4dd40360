"""The training stage's configuration: one dataclass, mirrored one to one by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.errors import ConfigError
from training.methods import METHODS, check_method
from tunestack.configfile import config_from_dict, config_to_dict
from tunestack.layout import RunLayout
from tunestack.problems import raise_problems

SCHEDULES = ("linear", "cosine", "constant")
"""Learning-rate decay shapes after warm-up (transformers' ``get_scheduler`` names)."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""Training precisions: fp32, or autocast to bf16 / fp16."""
STOP_METRICS = ("accuracy", "macro_f1", "val_loss")
"""Validation metrics early stopping can watch (val_loss goes down, the others up)."""
TASKS = ("classification", "causal-lm")
"""What is fine-tuned: a sequence classifier, or a causal language model (``training.causal_train``)."""
TASK_DEFAULTS = {
    "classification": {"max_length": 64, "early_stopping_metric": "accuracy", "eval_max_examples": 512, "batch_size": 16},
    "causal-lm": {"max_length": 128, "early_stopping_metric": "val_loss", "eval_max_examples": 64, "batch_size": 8},
}
"""The values the fields left at None take, per task (a causal LM costs ~50x a MiniLM per example on CPU)."""
TASK_STOP_METRICS = {"classification": STOP_METRICS, "causal-lm": ("val_loss",)}
"""The early-stopping metrics each task measures on its validation split."""


@dataclass
class TrainConfig:
    """Fine-tuning of a sequence classifier or a causal LM (LoRA by default). Output: ``runs/NAME/adapter/``.

    peft methods write an adapter there; ``full`` and ``freeze`` write the whole fine-tuned model there
    (``config.json`` + ``model.safetensors``). ``training_config.json`` beside it records the task and method.
    Fields left at None take the task's default (``TASK_DEFAULTS``), resolved here so the saved config is concrete.
    """

    task: str = "classification"
    """classification (a sequence classifier on labelled text) | causal-lm (a causal LM fine-tuned to write
    the reference output for a prompt; docs/generative.md)."""
    name: str = "demo"
    """Run name: everything is written under runs_dir/NAME/."""
    runs_dir: Path = Path("runs")
    """Folder holding the runs."""
    method: str = "lora"
    """lora | full | freeze | ia3 | loha (prompt/prefix tuning are refused: they cannot merge into ONNX)."""
    freeze_layers: int = 3
    """freeze: the embeddings plus this many bottom transformer blocks stay frozen (at most the model's depth)."""
    model: Path | None = None
    """Local Hugging Face model folder (causal-lm also takes a .gguf file); None: the bundled all-MiniLM-L6-v2
    (classification) or SmolLM2-135M-Instruct (causal-lm, dequantised once into runs/NAME/base)."""
    data: Path | None = None
    """CSV or JSONL file with a text and a label column (causal-lm: a prompt and a reference column); None: the
    bundled Rotten Tomatoes reviews (causal-lm: a one-line verdict per review, training.causal_data)."""
    validation_data: Path | None = None
    """Optional separate validation file (same columns); None: split from data."""
    test_data: Path | None = None
    """Optional separate test file (same columns); None: split from data."""
    text_column: str = "text"
    """Name of the text column in data files."""
    label_column: str = "label"
    """Name of the label column in data files."""
    reference_column: str = "reference"
    """causal-lm: name of the reference-output column in data files (text_column holds the prompt)."""
    validation_fraction: float = 0.1
    """Fraction of the data held out for validation (stratified by label)."""
    test_fraction: float = 0.1
    """Fraction of the data held out for the final test (stratified by label)."""
    max_examples: int | None = None
    """Use a stratified sample of at most this many examples before splitting (None: all)."""
    max_length: int | None = None
    """Tokens per example: a classifier truncates to it (as the served model does); causal-lm drops examples
    whose prompt + reference is longer. None: the task's default (classification 64, causal-lm 128)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on the LoRA branch."""
    target_modules: tuple[str, ...] = ()
    """Modules that get LoRA adapters; empty: the per-architecture default (BERT: query,value)."""
    learning_rate: float | None = None
    """Peak learning rate; None: the method's default (lora/loha 1e-3, ia3 5e-3, full 5e-5, freeze 1e-4)."""
    lr_schedule: str = "linear"
    """Decay after warm-up: linear | cosine | constant."""
    warmup_ratio: float = 0.05
    """Fraction of the optimizer steps spent warming the learning rate up from 0."""
    layerwise_lr_decay: float = 1.0
    """Layer-wise LR decay: block i of L gets lr * decay^(L - i), the embeddings lr * decay^(L + 1); 1.0: off."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    label_smoothing: float = 0.0
    """Label smoothing of the training cross-entropy (0: none)."""
    gradient_accumulation_steps: int = 1
    """Batches whose gradients add up before each optimizer step (effective batch = batch_size * this)."""
    precision: str = "fp32"
    """fp32 | bf16 (autocast; CPU or CUDA with bf16) | fp16 (CUDA only, with a GradScaler)."""
    allow_precision_fallback: bool = False
    """If the hardware lacks the asked precision, train in fp32 with a warning instead of refusing."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    early_stopping_metric: str | None = None
    """Validation metric for early stopping and the best checkpoint: accuracy | macro_f1 | val_loss (causal-lm:
    val_loss only, the mean token loss on the references). None: accuracy (classification), val_loss (causal-lm)."""
    clean_text: bool = False
    """Strip HTML tags and entities and normalize whitespace before de-duplicating (counts in metrics.json)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else the local store sqlite:///mlruns/mlflow.db; off: no tracking."""
    batch_size: int | None = None
    """Training batch size. None: the task's default (classification 16, causal-lm 8: more, smaller steps in a
    CPU budget)."""
    eval_batch_size: int = 64
    """Batch size for validation and test passes."""
    epochs: float = 1.0
    """Passes over the training split (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: from epochs)."""
    eval_every: int = 100
    """Evaluate on the validation split every N steps (and at the end)."""
    eval_max_examples: int | None = None
    """Periodic evaluations use at most this many validation examples (0: all). None: the task's default
    (classification 512, causal-lm 64)."""
    generation_examples: int = 48
    """causal-lm: held-out examples scored before and after fine-tuning (greedy ROUGE-L and BLEU-4, perplexity
    of the references); they are the first of the test split, which export's gates read too."""
    max_new_tokens: int = 24
    """causal-lm: the most tokens generated per prompt when scoring (outputs end earlier at the EOS token; the
    bundled task's references are 8-20 tokens)."""
    patience: int = 3
    """Early stopping: stop after this many evaluations without a better early_stopping_metric."""
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
        for key, value in TASK_DEFAULTS.get(self.task, TASK_DEFAULTS["classification"]).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(m.strip() for m in self.target_modules.split(",") if m.strip())
        self.target_modules = tuple(self.target_modules)
        problems: list[str] = []
        if self.task not in TASKS:
            problems.append(f"unknown task {self.task!r}; expected one of: {', '.join(TASKS)}")
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
        problems += check_method(self.method)
        choices = {"lr_schedule": SCHEDULES, "precision": PRECISIONS,
                   "early_stopping_metric": TASK_STOP_METRICS.get(self.task, STOP_METRICS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"unknown {name} {getattr(self, name)!r}; expected one of: {', '.join(allowed)}")
        for name in ("warmup_ratio", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            problems.append(f"layerwise_lr_decay must lie in (0, 1] (1.0: off), got {self.layerwise_lr_decay}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.freeze_layers < 0:
            problems.append(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        for name in ("max_length", "lora_r", "batch_size", "eval_batch_size", "eval_every", "patience",
                     "gradient_accumulation_steps", "generation_examples", "max_new_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_examples", "max_steps", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or None, got {value}")
        if self.eval_max_examples is not None and self.eval_max_examples < 0:
            problems.append(f"eval_max_examples must be >= 0 (0: all) or None, got {self.eval_max_examples}")
        if self.lora_alpha <= 0:
            problems.append(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.epochs <= 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            problems.append(f"time_budget_s must be > 0 or None, got {self.time_budget_s}")
        raise_problems(problems, ConfigError, "training config")

    @property
    def lr(self) -> float:
        """The peak learning rate: the one given, or the method's default."""
        return self.learning_rate if self.learning_rate is not None else METHODS[self.method].default_learning_rate

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def adapter_dir(self) -> Path:
        return RunLayout(self.run_dir).adapter

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data, ConfigError, "training")
