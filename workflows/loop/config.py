"""The retrain loop's settings: the ``loop:`` section of an experiment file, validated up front.

    loop:
      production_run: runs/demo        # the run production serves: its merged model, held-out set, training data
      triggers: {drift: true, new_labels: 500, every_s: 86400}   # any of them starts a cycle (and by hand)
      start_from: production           # fine-tune the production model further, or "base" (the base model)
      original_share: 0.3              # share of the new training set drawn from the original training data
      eval_fraction: 0.3               # the newest share of the labelled traffic evaluates, the rest trains
      min_gain: 0.0                    # gate: candidate - production accuracy on it, interval low bound > this
      max_forgetting: 0.02             # gate: on the original held-out set, interval low bound >= -this
      max_label_gap: 0.1               # gate: candidate on the newest traffic vs production on the original set
      train: {max_steps: 200, batch_size: 16}   # training.config.TrainConfig keys for the candidate

The production arm is the experiment's first arm, the candidate's slot its second (the rollout's treatment).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tunestack.configfile import load_config_file

SECTION = "loop"
START_FROM = ("production", "base")
TRIGGERS = ("drift", "new_labels", "every_s")
VARIANTS = ("fp32", "int8")


class LoopConfigError(ValueError):
    """An invalid ``loop:`` section (every problem listed)."""


@dataclass(frozen=True)
class Triggers:
    """What starts a retrain cycle; ``python -m workflows retrain --trigger manual`` starts one by hand."""

    drift: bool = True
    """Drift detected on the production arm (the store's drift windows against its training reference)."""
    new_labels: int | None = 200
    """This many new labelled kept inputs since the last cycle started; None: off."""
    every_s: float | None = None
    """A schedule: this many seconds after the last cycle started (or after the first look); None: off."""


@dataclass(frozen=True)
class LoopConfig:
    """The ``loop:`` section (see the module docstring)."""

    production_run: Path = Path("runs/demo")
    """The run production serves (``runs/NAME``): merged/ (the model a cycle starts from), merged/heldout.jsonl
    (the original held-out set the forgetting gate reads), adapter/training_config.json (the original data)."""
    triggers: Triggers = field(default_factory=Triggers)
    """What starts a cycle."""
    start_from: str = "production"
    """production: fine-tune the production model (``production_run``'s merged/) further; base: from the base model."""
    base_model: Path | None = None
    """start_from base: a local model folder; None: the model the production run was trained from."""
    original_share: float = 0.3
    """Share of the new training set drawn from the original training data, in [0, 1): the guard against
    forgetting the old task."""
    eval_fraction: float = 0.3
    """The newest share of the labelled traffic held out to evaluate (the rest, older, trains), in (0, 1)."""
    validation_fraction: float = 0.1
    """Share of the new training set used for early stopping, in (0, 1)."""
    min_examples: int = 100
    """Labelled kept inputs a cycle needs at least; fewer: the cycle stops as "too few labels"."""
    min_gain: float = 0.0
    """Gate: the lower bound of (candidate - production) accuracy on the newest labelled traffic must exceed it."""
    max_forgetting: float = 0.02
    """Gate: the lower bound of (candidate - production) accuracy on the original held-out set must be >= -this."""
    max_label_gap: float = 0.1
    """Gate, the labels' consistency: the candidate's accuracy on the newest labelled traffic (its interval's upper
    bound) may fall at most this far below production's accuracy on the original held-out set. Labels a model
    trained on them cannot reproduce are suspect: with a share q flipped at random, accuracy a reads as at most
    (1 - q) a + q (1 - a) (a = 0.8, q = 0.3: 0.62)."""
    confidence: float = 0.95
    """Two-sided confidence of the gate's intervals."""
    variant: str = "fp32"
    """The export variant published and canaried (fp32 or int8)."""
    train: dict[str, Any] = field(default_factory=dict)
    """``training.config.TrainConfig`` keys for the candidate (max_steps, time_budget_s, batch_size, ...); the
    best checkpoint is chosen by validation loss unless ``early_stopping_metric`` says otherwise."""
    runs_dir: Path = Path("runs")
    """Where each cycle's run is written: RUNS_DIR/EXPERIMENT-loop-CYCLE/."""
    repository: Path | str = Path("model_repository")
    """The model repository Triton serves, a folder or s3://BUCKET/PREFIX (credentials and endpoint from the
    environment, as ``python -m export`` reads them); the candidate is published into it as a new version."""
    lease_s: float = 900.0
    """The lease's length: another loop on the store may start once the holder has not renewed it for this long."""
    poll_s: float = 30.0
    """--watch: seconds between two looks at the triggers."""

    def __post_init__(self) -> None:
        problems = []
        if self.start_from not in START_FROM:
            problems.append(f"start_from={self.start_from!r}: expected one of {list(START_FROM)}")
        if self.variant not in VARIANTS:
            problems.append(f"variant={self.variant!r}: expected one of {list(VARIANTS)}")
        for name, lo, hi in (("original_share", 0.0, 0.95), ("eval_fraction", 0.05, 0.95),
                             ("validation_fraction", 0.01, 0.5), ("confidence", 0.5, 0.9999)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not lo <= value <= hi:
                problems.append(f"{name}={value!r}: expected a number in [{lo}, {hi}]")
        if not isinstance(self.min_examples, int) or self.min_examples < 10:
            problems.append(f"min_examples={self.min_examples!r}: expected an integer >= 10")
        if not isinstance(self.max_forgetting, int | float) or self.max_forgetting < 0:
            problems.append(f"max_forgetting={self.max_forgetting!r}: expected a share >= 0 (0.02: two points)")
        if not isinstance(self.max_label_gap, int | float) or not 0 <= self.max_label_gap <= 1:
            problems.append(f"max_label_gap={self.max_label_gap!r}: expected a share in [0, 1] (1: off)")
        if not isinstance(self.min_gain, int | float) or not -1 < self.min_gain < 1:
            problems.append(f"min_gain={self.min_gain!r}: expected a share in (-1, 1)")
        for name in ("lease_s", "poll_s"):
            if not isinstance(getattr(self, name), int | float) or getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)!r}: expected seconds > 0")
        t = self.triggers
        if t.new_labels is not None and (not isinstance(t.new_labels, int) or t.new_labels < 1):
            problems.append(f"triggers.new_labels={t.new_labels!r}: expected a count >= 1, or null (off)")
        if t.every_s is not None and (not isinstance(t.every_s, int | float) or t.every_s <= 0):
            problems.append(f"triggers.every_s={t.every_s!r}: expected seconds > 0, or null (off)")
        if problems:
            raise LoopConfigError(f"invalid {SECTION} section: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else str(v) if isinstance(v, Path) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, data: Any) -> LoopConfig:
        """The section as parsed; unknown keys (here and in ``triggers``) are reported together."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise LoopConfigError(f"{SECTION}: expected a mapping of loop settings, got {data!r:.100}")
        problems, values = [], dict(data)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            problems.append(f"unknown key(s) {unknown}; expected some of {sorted(f.name for f in fields(cls))}")
        triggers = values.pop("triggers", None) or {}
        if not isinstance(triggers, dict) or set(triggers) - set(TRIGGERS):
            problems.append(f"triggers={triggers!r}: expected a mapping with some of {list(TRIGGERS)}")
            triggers = {}
        if not isinstance(values.get("train", {}), dict):
            problems.append(f"train={values['train']!r}: expected a mapping of training settings")
        if problems:
            raise LoopConfigError(f"invalid {SECTION} section: " + "; ".join(problems))
        for key in ("production_run", "base_model", "runs_dir", "repository"):
            if values.get(key) is not None and not (key == "repository" and str(values[key]).startswith("s3://")):
                values[key] = Path(values[key])  # an S3 URI stays a string: Path would eat a slash
        return cls(triggers=Triggers(**triggers), **values)


def read_loop_config(experiment_file: str | Path) -> LoopConfig:
    """The ``loop:`` section of an experiment file (the defaults when absent)."""
    return LoopConfig.from_dict(load_config_file(experiment_file).get(SECTION))
