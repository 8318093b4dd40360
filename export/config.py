"""The export stage's configuration: one dataclass, mirrored one to one by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.contract import VARIANT_FILES
from export.errors import ConfigError
from training.cli import config_from_dict, config_to_dict

LAYOUTS = ("python", "onnxruntime")


@dataclass
class ExportConfig:
    """Merge -> ONNX -> parity gate -> publish. Paths default to ``runs/NAME/...``."""

    adapter: Path | None = None
    """LoRA adapter folder written by ``python -m training`` (``runs/NAME/adapter``)."""
    name: str | None = None
    """Run name; defaults to the adapter's parent folder name (``runs/NAME/adapter`` -> NAME)."""
    runs_dir: Path = Path("runs")
    """Where ``NAME/merged`` and ``NAME/onnx`` are written."""
    variants: tuple[str, ...] = ("fp32", "int8")
    """Variants to export and gate: fp32 and/or int8 (dynamic quantization)."""
    opset: int | None = None
    """ONNX opset; None lets Optimum choose."""
    int8_per_channel: bool = True
    """Quantize int8 weights per output channel (per-tensor loses ~1.5 accuracy points on MiniLM)."""
    parity_data: Path | None = None
    """JSONL of held-out examples ({"text", "label"}); defaults to the adapter's heldout.jsonl."""
    parity_max_examples: int | None = None
    """Use at most this many held-out examples for parity (None: all)."""
    parity_batch_size: int = 32
    """Batch size for the parity forward passes."""
    fp32_max_abs_diff: float = 1e-4
    """Gate: the largest |logit difference| allowed between fp32 ONNX and torch."""
    fp32_min_agreement: float = 1.0
    """Gate: the fraction of labels fp32 ONNX must agree on with torch."""
    int8_max_accuracy_drop: float = 1.0
    """Gate: the accuracy points int8 may lose against fp32 (1.0 = one percentage point)."""
    publish: bool = True
    """Publish the requested variants that pass the gate to the model repository."""
    repository: str | Path = Path("model_repository")
    """The Triton model repository to publish into: a folder, or s3://BUCKET/PREFIX (credentials and
    endpoint from the standard AWS environment variables)."""
    model_name: str = "sentiment"
    """The Triton model name; each published variant becomes a new numbered version of it."""
    layout: str = "python"
    """python: a python-backend model running ONNX Runtime (works with the bundled Triton);
    onnxruntime: an ensemble python tokenizer -> onnxruntime_onnx model, for a full Triton install."""
    max_batch_size: int = 64
    """Triton max_batch_size written into config.pbtxt."""
    dynamic_batching: bool = True
    """Write a dynamic_batching block into config.pbtxt."""
    max_queue_delay_us: int = 2000
    """dynamic_batching.max_queue_delay_microseconds."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """dynamic_batching.preferred_batch_size (empty: let Triton choose)."""
    instance_count: int = 1
    """instance_group count (KIND_CPU)."""
    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads per Triton model instance."""
    served_versions: int = 2
    """version_policy: Triton loads the newest N versions (0: all); 2 serves fp32 and int8 side by side."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes copied into the provenance."""

    def __post_init__(self) -> None:
        if self.adapter is not None:
            self.adapter = Path(self.adapter)
        self.runs_dir = Path(self.runs_dir)
        if not str(self.repository).startswith("s3://"):  # an S3 URI stays a string: Path would eat a slash
            self.repository = Path(self.repository)
        if self.parity_data is not None:
            self.parity_data = Path(self.parity_data)
        if isinstance(self.variants, str):
            self.variants = tuple(v.strip() for v in self.variants.split(",") if v.strip())
        self.variants = tuple(self.variants)
        self.preferred_batch_sizes = tuple(int(x) for x in self.preferred_batch_sizes)
        problems = []
        unknown = [v for v in self.variants if v not in VARIANT_FILES]
        if unknown or not self.variants:
            problems.append(f"unknown variant(s) {unknown or self.variants!r}; expected one or more of: {', '.join(VARIANT_FILES)}")
        if self.layout not in LAYOUTS:
            problems.append(f"unknown layout {self.layout!r}; expected one of: {', '.join(LAYOUTS)}")
        for name in ("max_batch_size", "instance_count", "intra_op_threads", "parity_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.served_versions < 0:
            problems.append(f"served_versions must be >= 0 (0: all), got {self.served_versions}")
        if self.max_queue_delay_us < 0:
            problems.append(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if any(b < 1 or b > self.max_batch_size for b in self.preferred_batch_sizes):
            problems.append(f"preferred_batch_sizes {self.preferred_batch_sizes} must lie in 1..max_batch_size ({self.max_batch_size})")
        if not 0.0 <= self.fp32_min_agreement <= 1.0:
            problems.append(f"fp32_min_agreement must lie in [0, 1], got {self.fp32_min_agreement}")
        if self.fp32_max_abs_diff < 0 or self.int8_max_accuracy_drop < 0:
            problems.append("gate thresholds must be >= 0")
        if not self.model_name or "/" in self.model_name:
            problems.append(f"model_name {self.model_name!r} must be a non-empty folder name")
        if problems:
            raise ConfigError("invalid export config:\n  - " + "\n  - ".join(problems))

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        if self.adapter is None:
            raise ConfigError("no adapter given: pass --adapter runs/NAME/adapter (or run `make export`, which trains first)")
        return self.adapter.resolve().parent.name

    @property
    def merged_dir(self) -> Path:
        return self.runs_dir / self.run_name / "merged"

    @property
    def onnx_dir(self) -> Path:
        return self.runs_dir / self.run_name / "onnx"

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        return config_from_dict(cls, data, ConfigError, "export")
