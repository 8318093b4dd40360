"""The export stage's configuration: one dataclass, mirrored one to one by the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.contract import CONTRACT, DECODE_BATCHING, GENERATIVE, GENERATIVE_VARIANT_FILES, VARIANT_FILES
from export.errors import ConfigError
from tunestack import names
from tunestack.configfile import config_from_dict, config_to_dict
from tunestack.layout import RunLayout
from tunestack.problems import raise_problems

INT8_SCHEMES = ("weight-only", "dynamic")
"""How a causal LM's int8 variant is quantized (``export.onnx_causal``)."""
TASKS = ("classification", "causal-lm")
"""What the adapter was fine-tuned for (``training.config.TASKS``): the export path follows it."""

LAYOUTS = ("python", "onnxruntime")
INT8_VARIANTS = ("int8", "int8-static")
"""The quantized variants: ``int8`` (dynamic) and ``int8-static`` (calibrated QDQ), each gated on its
accuracy drop against fp32 (``int8_max_accuracy_drop``)."""
DEFAULT_VARIANTS = ("fp32", "int8")
"""What ``make export`` / ``make demo`` publish. int8-static is asked for by name (``--variants
fp32,int8,int8-static``): on the demo model it lost 1.65 accuracy points against fp32 and the gate refused it,
and a refused variant stops the whole publish."""
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
MAX_THREADS_PER_INSTANCE = 4
"""ORT intra-op threads beyond which a MiniLM-sized encoder gains little: more cores become more instances."""
SERVING_SETTINGS = ("instance_count", "intra_op_threads", "max_queue_delay_us", "preferred_batch_sizes")
"""The Triton settings derived from the core count when not given (``serving_defaults``)."""


def serving_defaults(cpu_count: int) -> dict[str, Any]:
    """The published Triton settings for a machine with ``cpu_count`` cores, before any tuning.

    - ``intra_op_threads`` = min(cores, 4) and ``instance_count`` = cores // threads, so instances x
      threads = the cores (2 cores: 1 x 2; 8 cores: 2 x 4; 16 cores: 4 x 4): a lone request gets every
      core it can use, and a busy server keeps all of them working without oversubscribing.
    - ``max_queue_delay_us`` = 500: a lone request waits at most 0.5 ms for batch-mates; under load the
      queue fills while the instances are busy, so batches form without a longer window.
    - ``preferred_batch_sizes`` = none: the model runs a batch in length buckets, so a larger batch is
      never slower per item and the batcher may take whatever is queued (up to ``max_batch_size``).

    ``make tune`` measures better settings for a given machine and load; these are the starting point.
    """
    cores = max(1, int(cpu_count))
    threads = min(cores, MAX_THREADS_PER_INSTANCE)
    return {"instance_count": max(1, cores // threads), "intra_op_threads": threads, "max_queue_delay_us": 500,
            "preferred_batch_sizes": ()}


def training_task(folder: Path) -> str:
    """The task of the training run in ``folder`` (its ``training_config.json``; none, or no task key: classification)."""
    config = Path(folder) / names.TRAINING_CONFIG_FILE
    return json.loads(config.read_text()).get("task", "classification") if config.is_file() else "classification"


@dataclass
class ExportConfig:
    """Merge -> ONNX -> parity gate -> publish. Paths default to ``runs/NAME/...``."""

    adapter: Path | None = None
    """LoRA adapter folder written by ``python -m training`` (``runs/NAME/adapter``)."""
    task: str | None = None
    """classification | causal-lm; None: the task the adapter was trained for (its training_config.json)."""
    name: str | None = None
    """Run name; defaults to the adapter's parent folder name (``runs/NAME/adapter`` -> NAME)."""
    runs_dir: Path = Path("runs")
    """Where ``NAME/merged`` and ``NAME/onnx`` are written."""
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    """Variants to export, gate and publish (in this order): fp32, int8 (dynamic quantization) and/or
    int8-static (calibrated QDQ)."""
    opset: int | None = None
    """ONNX opset; None lets Optimum choose."""
    optimize: bool = True
    """Fuse attention, LayerNorm and GELU with ONNX Runtime's transformer optimizer: the fp32 variant and
    the base of both int8 variants (the unfused export stays beside it as model.unfused.onnx)."""
    int8_per_channel: bool = True
    """Quantize int8 weights per output channel (per-tensor loses ~1.5 accuracy points on MiniLM)."""
    calibration_data: Path | None = None
    """JSONL of TRAINING examples to calibrate int8-static on; defaults to the run's training split,
    re-derived from its training_config.json. Texts of the held-out set are refused."""
    calibration_examples: int = 256
    """How many training texts calibrate int8-static's activation ranges."""
    calibration_method: str = "minmax"
    """int8-static calibration: minmax, percentile or entropy."""
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
    """Gate: the accuracy points int8 and int8-static may each lose against fp32 (1.0 = one percentage point)."""
    batch_invariance_probes: int = 32
    """Held-out texts scored alone and inside a batch of 16 others, per variant (0: skip the check)."""
    batch_invariance_tolerance: float = 1e-6
    """A variant is batch-invariant when every probe keeps its label and its probabilities move at most this."""
    publish: bool = True
    """Publish the requested variants that pass the gate to the model repository."""
    repository: str | Path = Path("model_repository")
    """The Triton model repository to publish into: a folder, or s3://BUCKET/PREFIX (credentials and
    endpoint from the standard AWS environment variables)."""
    model_name: str | None = None
    """The Triton model name; each published variant becomes a new numbered version of it. None: sentiment
    (classification) or verdict-llm (causal-lm)."""
    layout: str = "python"
    """python: a python-backend model running ONNX Runtime (works with the bundled Triton);
    onnxruntime: an ensemble python tokenizer -> onnxruntime_onnx model, for a full Triton install."""
    max_batch_size: int = 64
    """Triton max_batch_size written into config.pbtxt."""
    dynamic_batching: bool = True
    """Write a dynamic_batching block into config.pbtxt."""
    cpu_count: int | None = None
    """Cores the serving settings below are derived from when not given (None: os.cpu_count() here);
    see export.config.serving_defaults."""
    max_queue_delay_us: int | None = None
    """dynamic_batching.max_queue_delay_microseconds (None: derived, 500)."""
    preferred_batch_sizes: tuple[int, ...] | None = None
    """dynamic_batching.preferred_batch_size (None: derived, none; empty: let Triton choose)."""
    instance_count: int | None = None
    """instance_group count (KIND_CPU) (None: derived, cores // intra_op_threads)."""
    intra_op_threads: int | None = None
    """ONNX Runtime intra-op threads per Triton model instance (None: derived, min(cores, 4))."""
    intra_op_spinning: bool = False
    """Let those threads busy-wait between and after runs (python layout): lower latency at low load for
    several times the CPU, and slower when the cores are shared (other versions, the router, a load
    generator). Off by default; ``make tune`` measures it (``--spinning off,on``)."""
    served_versions: int = 3
    """version_policy: Triton loads the newest N versions (0: all); 3 serves one export's fp32 and int8 plus
    one more (int8-static when exported, or a version ``serving tune`` published)."""
    generation_parity_prompts: int = 8
    """causal-lm gate: held-out prompts decoded greedily by torch and by ONNX fp32; every token must be the same."""
    generation_max_new_tokens: int = 24
    """causal-lm gates: the most tokens generated per prompt (outputs end earlier at the EOS token)."""
    logit_max_abs_diff: float = 1e-3
    """causal-lm gate: the largest |logit difference| allowed between ONNX fp32 and torch over the greedy steps."""
    quality_examples: int = 48
    """causal-lm int8 gate: held-out examples scored by fp32 and int8 (greedy ROUGE-L, reference perplexity)."""
    int8_scheme: str = "weight-only"
    """causal-lm int8: weight-only (MatMulNBits: int8 weights of the constant-weight MatMuls, int8 compute with
    per-block activation scales) or dynamic (quantize_dynamic, as the classifier; the gate refuses it on
    SmolLM2). See export.onnx_causal."""
    int8_max_rouge_drop: float = 2.0
    """causal-lm int8 gate: the ROUGE-L points (0-100 scale) int8 may lose against fp32."""
    int8_max_perplexity_increase: float = 0.10
    """causal-lm int8 gate: the relative perplexity increase int8 may have over fp32 (0.10 = 10 %)."""
    decode_batching: str = "continuous"
    """causal-lm served model: continuous (iteration-level batching: every active stream in one ONNX call per
    decode step, streams joining and leaving between steps) or none (a thread per stream); docs/generative.md
    has the measurements."""
    max_sequences: int = 8
    """causal-lm served model: streams decoded at once per instance (the others wait in arrival order)."""
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
        if self.calibration_data is not None:
            self.calibration_data = Path(self.calibration_data)
        if self.cpu_count is None:
            self.cpu_count = os.cpu_count() or 1
        for name, value in serving_defaults(self.cpu_count).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.preferred_batch_sizes = tuple(int(x) for x in self.preferred_batch_sizes)
        if self.task is None:
            self.task = training_task(self.adapter) if self.adapter is not None else "classification"
        if self.model_name is None:
            self.model_name = GENERATIVE.default_model_name if self.task == "causal-lm" else CONTRACT.default_model_name
        problems = []
        if self.task not in TASKS:
            problems.append(f"unknown task {self.task!r}; expected one of: {', '.join(TASKS)}")
        if self.int8_scheme not in INT8_SCHEMES:
            problems.append(f"unknown int8_scheme {self.int8_scheme!r}; expected one of: {', '.join(INT8_SCHEMES)}")
        if self.task == "causal-lm" and str(self.repository).startswith("s3://"):
            problems.append(f"repository {self.repository}: a causal LM publishes to a local folder only")
        allowed = GENERATIVE_VARIANT_FILES if self.task == "causal-lm" else VARIANT_FILES
        unknown = [v for v in self.variants if v not in allowed]
        if unknown or not self.variants:
            problems.append(f"unknown variant(s) {unknown or self.variants!r} for task {self.task}; expected one or more "
                            f"of: {', '.join(allowed)}" + (" (int8-static calibrates encoder inputs: classifiers only)"
                                                           if "int8-static" in unknown else ""))
        if self.decode_batching not in DECODE_BATCHING:
            problems.append(f"unknown decode_batching {self.decode_batching!r}; expected one of: {', '.join(DECODE_BATCHING)}")
        if self.layout not in LAYOUTS:
            problems.append(f"unknown layout {self.layout!r}; expected one of: {', '.join(LAYOUTS)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            problems.append(f"unknown calibration_method {self.calibration_method!r}; expected one of: {', '.join(CALIBRATION_METHODS)}")
        if self.batch_invariance_probes < 0:
            problems.append(f"batch_invariance_probes must be >= 0 (0: skip the check), got {self.batch_invariance_probes}")
        if self.batch_invariance_tolerance < 0:
            problems.append(f"batch_invariance_tolerance must be >= 0, got {self.batch_invariance_tolerance}")
        for name in ("max_batch_size", "instance_count", "intra_op_threads", "parity_batch_size", "cpu_count",
                     "calibration_examples", "generation_parity_prompts", "generation_max_new_tokens", "quality_examples",
                     "max_sequences"):
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
        if min(self.fp32_max_abs_diff, self.int8_max_accuracy_drop, self.logit_max_abs_diff, self.int8_max_rouge_drop,
               self.int8_max_perplexity_increase) < 0:
            problems.append("gate thresholds must be >= 0")
        if not self.model_name or "/" in self.model_name:
            problems.append(f"model_name {self.model_name!r} must be a non-empty folder name")
        raise_problems(problems, ConfigError, "export config")

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        if self.adapter is None:
            raise ConfigError("no adapter given: pass --adapter runs/NAME/adapter (or run `make export`, which trains first)")
        return self.adapter.resolve().parent.name

    @property
    def merged_dir(self) -> Path:
        return RunLayout.of(self.runs_dir, self.run_name).merged

    @property
    def onnx_dir(self) -> Path:
        return RunLayout.of(self.runs_dir, self.run_name).onnx

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        return config_from_dict(cls, data, ConfigError, "export")
