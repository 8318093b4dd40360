"""The rollout's settings: the experiment file's ``rollout:`` section, and the command line.

    rollout:                       # in the experiment file, beside name/arms (the router ignores it)
      treatment: int8              # the arm to ramp (default: the second arm)
      steps: [1, 5, 25, 50, 100]   # treatment share in percent, in order
      guardrails: [error_rate, latency_p99, label_distribution]
      success_metrics: []          # metrics the treatment must be found "better" on, e.g. [accuracy]
      min_step_requests: 200       # new treatment requests at a step before it may be promoted
      step_timeout_s: 600          # an undecided step then holds or rolls back (on_timeout)
      on_timeout: hold
      judge:                       # onto experiments.judge.JudgeConfig: alpha, margins, min_samples, quantile, tune_n
        margins: {latency_p99: 0.02}   # a share: at most 2 points more answers slower than the control's p99

The judge reads the store's unit table (users are the units, each revision a period); a sample-ratio
mismatch halts the rollout (``decision.py``). Margins of shares (``error_rate``, ``latency_p99``, ``accuracy``,
``label_distribution``, ``confidence_mean``) lie in [0, 1]; ``latency_mean``'s is in ms. Every problem in the
section is collected and raised once (``RolloutConfigError``), naming the key, the value and what is expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from experiments.judge import ALL_METRICS, JudgeConfig
from experiments.judge.config import HIGHER_IS_BETTER

GUARDRAIL_METRICS = ("error_rate", "latency_mean", "latency_p99", "label_distribution", "confidence_mean",
                     "ttft_mean", "itl_mean", "output_tokens_mean", "tokens_per_s")
"""The judge's metrics a rollout may use as guardrails (everything but accuracy and quality, which need
feedback). A generative experiment's guardrails are among its own metrics, e.g. ``[error_rate, ttft_mean,
itl_mean]`` (``label_distribution``, the default's, is a classifier's)."""

ON_TIMEOUT = ("hold", "rollback")


class RolloutConfigError(ValueError):
    """The ``rollout:`` section (or a flag) is invalid; the message lists every problem."""


@dataclass(frozen=True)
class RolloutConfig:
    """How the treatment is ramped and when it is promoted, held or rolled back (the ``rollout:`` section)."""

    treatment: str | None = None
    """The arm whose weight is ramped; None: the experiment's second arm (the first is the control)."""
    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    """The treatment's share of traffic at each step, in percent, increasing, in (0, 100]."""
    guardrails: tuple[str, ...] = ("error_rate", "latency_p99", "label_distribution")
    """Metrics that must be "equivalent within margin" or "better" to promote; any "worse" (or "different"
    label mix) rolls back. ``confidence_mean`` is off by default: "worse" has no size threshold, and an int8
    export's confidence sits a steady ~1e-4 below its fp32's, which would roll back every quantized candidate."""
    success_metrics: tuple[str, ...] = ()
    """Metrics the treatment must also be found "better" on (its interval wholly above no difference) before a
    step is promoted: the point of the change, say ``accuracy`` for a retrained model. Empty: a step is promoted
    on its guardrails alone ("no worse"). A success metric found "worse" rolls back; one never found "better"
    leaves the step undecided until ``step_timeout_s``. The judge's "better" holds at every look at level
    ``judge.alpha``, so promoting at the first "better" is sound."""
    rollback_on_accuracy: bool = True
    """Roll back when accuracy from feedback is "worse" (promotion never waits for feedback)."""
    min_step_requests: int = 200
    """New treatment requests a step must serve before it may be promoted (a rollback never waits)."""
    step_timeout_s: float = 600.0
    """Seconds a step may stay undecided; then ``on_timeout``."""
    on_timeout: Literal["hold", "rollback"] = "hold"
    """An undecided step after its timeout: "hold" (keep its weight, stop, a person decides) or "rollback"."""
    poll_s: float = 2.0
    """Seconds between two looks at the store's evidence."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Alpha, margins, minimum samples, quantile and tune_n of the anytime-valid judge."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise RolloutConfigError("invalid rollout section: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        steps = list(self.steps)
        if not steps:
            out.append("steps is empty; expected percentages such as [1, 5, 25, 50, 100]")
        if any(not 0 < s <= 100 for s in steps):
            out.append(f"steps={steps}: every step must be in (0, 100] percent")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            out.append(f"steps={steps}: expected strictly increasing percentages")
        unknown = [g for g in self.guardrails if g not in GUARDRAIL_METRICS]
        if unknown:
            out.append(f"guardrails: unknown metric(s) {unknown}; expected some of {list(GUARDRAIL_METRICS)}")
        if not self.guardrails:
            out.append("guardrails is empty; expected at least one of " + ", ".join(GUARDRAIL_METRICS))
        directed = [m for m in ALL_METRICS if HIGHER_IS_BETTER.get(m) is not None]
        wrong = [m for m in self.success_metrics if m not in directed]
        if wrong:
            out.append(f"success_metrics: {wrong} cannot be found better; expected some of {directed}")
        if self.min_step_requests < 0:
            out.append(f"min_step_requests={self.min_step_requests}: expected >= 0")
        if self.step_timeout_s <= 0:
            out.append(f"step_timeout_s={self.step_timeout_s}: expected > 0 seconds")
        if self.on_timeout not in ON_TIMEOUT:
            out.append(f"on_timeout={self.on_timeout!r}: expected one of {list(ON_TIMEOUT)}")
        if self.poll_s <= 0:
            out.append(f"poll_s={self.poll_s}: expected > 0 seconds")
        return out

    @property
    def watched(self) -> tuple[str, ...]:
        """Every metric whose "worse" rolls back: the guardrails, the success metrics, and accuracy when
        configured."""
        extra = ("accuracy",) if self.rollback_on_accuracy else ()
        return tuple(dict.fromkeys((*self.guardrails, *self.success_metrics, *extra)))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "steps": list(self.steps), "guardrails": list(self.guardrails),
                "success_metrics": list(self.success_metrics), "judge": self.judge.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, source: str = "rollout") -> RolloutConfig:
        """The section as parsed from YAML/TOML; unknown keys and bad values are all reported at once."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise RolloutConfigError(f"{source}: expected a mapping of rollout settings, got {data!r:.100}")
        known = {f.name for f in fields(cls)}
        problems = [f"unknown key(s) {sorted(set(data) - known)}; expected some of {sorted(known)}"] \
            if set(data) - known else []
        values = {k: v for k, v in data.items() if k in known}
        for key in ("steps", "guardrails", "success_metrics"):
            if key in values and not isinstance(values[key], list | tuple):
                problems.append(f"{key}={values[key]!r}: expected a list")
                values.pop(key)
        try:
            if "judge" in values:
                values["judge"] = _judge_config(values["judge"])
            if "steps" in values:
                values["steps"] = tuple(float(s) for s in values["steps"])
        except (ValueError, TypeError) as e:  # RolloutConfigError is a ValueError
            problems.append(str(e))
        for key in ("guardrails", "success_metrics"):
            if key in values:
                values[key] = tuple(str(g) for g in values[key])
        if problems:
            raise RolloutConfigError(f"invalid {source} section: " + "; ".join(problems))
        return cls(**values)


def _judge_config(data: Any) -> JudgeConfig:
    """``judge:`` onto ``JudgeConfig``; a metric name that is not the judge's is named in the error."""
    if not isinstance(data, dict):
        raise RolloutConfigError(f"judge: expected a mapping (alpha, margins, min_samples, ...), got {data!r:.100}")
    for key in ("margins", "min_samples"):
        unknown = sorted(set(data.get(key) or {}) - set(ALL_METRICS))
        if unknown:
            raise RolloutConfigError(f"judge.{key}: unknown metric(s) {unknown}; expected some of {list(ALL_METRICS)}")
    try:
        return JudgeConfig.from_dict(data)
    except TypeError as e:
        raise RolloutConfigError(f"judge: {e}; expected keys of JudgeConfig: alpha, margins, min_samples, "
                                 "quantile, tune_n") from None


@dataclass
class RolloutArgs:
    """Ramp an experiment's treatment through the experiment store, promoting or rolling back on the judge's
    verdicts (``python -m serving rollout``)."""

    experiment: str
    """The experiment file (YAML or TOML); its ``rollout:`` section holds the margins, minimum samples and timeouts."""
    steps: tuple[str, ...] = ()
    """Override of the section's steps, in percent: 1,5,25,50,100."""
    store: str | None = None
    """The experiment store URL (as the router's --store); else $TUNESTACK_ROUTER_STORE, else the file's
    ``store``, else EXPERIMENT_FILE_STEM.store.sqlite beside the file."""
    out_dir: str = "reports"
    """The rollout report goes to OUT_DIR/rollout-TIMESTAMP/."""
    who: str = "rollout"
    """Who the store's audit log names for this controller's decisions."""
    stay: bool = False
    """Keep the process alive after the rollout ends (as a k8s Deployment: the pod stays Running instead of
    restarting a finished controller); SIGTERM ends it."""
