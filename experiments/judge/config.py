"""The judge's settings: alpha, the metrics it reports, their margins and minimum samples.

An experiment has the metrics of its kind: a classifier's ``METRICS``, or a generative model's
``GENERATIVE_METRICS`` (the unit table says which: ``UnitTable.generative``, true once any answer was a
generated stream, so from the first answer on). The family-wise error rate is split evenly (Bonferroni) over
every check the judge makes: the metrics of the experiment's kind for each treatment against the control,
always all of them, whether or not a metric has data yet, plus one sample-ratio check of the whole experiment
(``checks``). So the split never changes during an experiment: with one treatment each confidence sequence is
at level ``alpha / 7`` for a classifier (``alpha / 9`` for a generative model), and the chance of any false
"better", "worse", "different" or "sample ratio mismatch", on any metric, at any look, is at most ``alpha``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

METRICS = ("error_rate", "latency_mean", "latency_p99", "accuracy", "label_distribution", "confidence_mean")
"""Every metric the judge reports on a classifier, in report order."""
GENERATIVE_METRICS = ("error_rate", "latency_mean", "latency_p99", "ttft_mean", "itl_mean", "output_tokens_mean",
                      "tokens_per_s", "quality")
"""Every metric the judge reports on a generative model (``experiments.generation``), in report order:
``latency_*`` are the whole stream's (request in -> last token)."""
ALL_METRICS = tuple(dict.fromkeys(METRICS + GENERATIVE_METRICS))
"""Every metric of either kind (the configs' margins and minimum samples name them all)."""


def metrics_of(generative: bool) -> tuple[str, ...]:
    """The metrics of an experiment of that kind."""
    return GENERATIVE_METRICS if generative else METRICS


HIGHER_IS_BETTER = {"error_rate": False, "latency_mean": False, "latency_p99": False, "accuracy": True,
                    "label_distribution": None, "confidence_mean": True, "ttft_mean": False, "itl_mean": False,
                    "output_tokens_mean": None, "tokens_per_s": True, "quality": True}
"""The direction of "better" per metric; ``None``: a difference has no direction ("different")."""

SHARES = ("error_rate", "latency_p99", "accuracy", "label_distribution", "confidence_mean", "quality")
"""Metrics whose differences (and margins) are differences of shares or probabilities, in [0, 1]: the
``latency_p99`` guardrail is the share of answers slower than the control's p99, not milliseconds."""

UNITS = {"error_rate": "", "latency_mean": " ms", "latency_p99": "", "accuracy": "", "label_distribution": "",
         "confidence_mean": "", "ttft_mean": " ms", "itl_mean": " ms", "output_tokens_mean": " tokens",
         "tokens_per_s": " tokens/s", "quality": ""}
"""The unit of each metric's interval, for reports (``latency_p99`` is a difference of shares)."""


@dataclass(frozen=True)
class Margins:
    """Equivalence margins: "equivalent within margin" when the whole CS of the difference lies in +-margin."""

    error_rate: float = 0.005
    """Server-error rate, absolute (0.005 = half a percentage point)."""
    latency_mean: float = 1.0
    """Mean latency (clipped at ``units.LATENCY_CAP_MS``), in ms."""
    latency_p99: float = 0.01
    """The share of answers slower than the tail threshold (the control's p99), absolute: 0.01 lets the
    treatment's share move from the control's ~1 % to at most ~2 % (for the demo model's latencies, a p99
    about 7 % slower)."""
    accuracy: float = 0.02
    """Accuracy from feedback, absolute (0.02 = two points)."""
    label_distribution: float = 0.05
    """The share of every predicted label, absolute."""
    confidence_mean: float = 0.02
    """Mean top-class probability, absolute."""
    ttft_mean: float = 10.0
    """Mean time to first token (each clipped at ``experiments.generation.TTFT_CAP_MS``), in ms."""
    itl_mean: float = 2.0
    """Mean inter-token latency (every gap between tokens), in ms."""
    output_tokens_mean: float = 1.0
    """Mean output tokens per answer (no direction: a change is "different")."""
    tokens_per_s: float = 1.0
    """Output tokens per second of stream (tokens / (request in -> last token), summed over answers)."""
    quality: float = 0.02
    """Mean quality feedback in [0, 1] (a rating, or ROUGE-L F against a reference), absolute."""


@dataclass(frozen=True)
class MinSamples:
    """Per arm, the samples a metric needs before any verdict (before: "not enough evidence yet")."""

    error_rate: int = 200
    """Requests (answered or failed on the server side)."""
    latency_mean: int = 200
    """Answered requests."""
    latency_p99: int = 500
    """Answered requests; the control's first this many answers also set the tail threshold."""
    accuracy: int = 100
    """Feedback outcomes."""
    label_distribution: int = 200
    """Predictions."""
    confidence_mean: int = 200
    """Predictions with a confidence."""
    ttft_mean: int = 200
    """Streamed answers."""
    itl_mean: int = 1000
    """Gaps between tokens."""
    output_tokens_mean: int = 200
    """Streamed answers."""
    tokens_per_s: int = 200
    """Streamed answers."""
    quality: int = 100
    """Quality feedback."""


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge decides; the defaults suit the demo model (10 ms median latency, two labels)."""

    alpha: float = 0.05
    """Family-wise error rate over all metrics, all treatments, the sample-ratio check and all looks."""
    margins: Margins = field(default_factory=Margins)
    """Equivalence margins per metric."""
    min_samples: MinSamples = field(default_factory=MinSamples)
    """Minimum samples per arm per metric."""
    quantile: float = 0.99
    """The latency quantile of the control that sets the tail threshold (0.99: p99)."""
    tune_n: int = 2000
    """Effective samples per arm at which the intervals are tightest (they stay valid before and after)."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.alpha < 1:
            problems.append(f"alpha={self.alpha}: expected 0 < alpha < 1")
        if not 0 < self.quantile < 1:
            problems.append(f"quantile={self.quantile}: expected 0 < quantile < 1")
        if self.tune_n < 1:
            problems.append(f"tune_n={self.tune_n}: expected >= 1")
        for name in ALL_METRICS:
            margin = getattr(self.margins, name)
            if margin < 0:
                problems.append(f"margins.{name}={margin}: expected >= 0")
            elif name in SHARES and margin > 1:
                problems.append(f"margins.{name}={margin}: expected a difference of shares in [0, 1] "
                                f"(default {getattr(Margins(), name)})")
            if getattr(self.min_samples, name) < 2:
                problems.append(f"min_samples.{name}={getattr(self.min_samples, name)}: expected >= 2")
        if problems:
            raise ValueError("invalid judge config: " + "; ".join(problems))

    @staticmethod
    def checks(comparisons: int = 1, generative: bool = False) -> int:
        """The checks alpha is split over: every metric of every treatment (the metrics of the experiment's
        kind), and the sample-ratio check."""
        return max(1, comparisons) * len(metrics_of(generative)) + 1

    def alpha_per_metric(self, comparisons: int = 1, generative: bool = False) -> float:
        """The level of each metric's CS, and of the sample-ratio check: ``alpha / checks(...)``."""
        return self.alpha / self.checks(comparisons, generative)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JudgeConfig:
        data = dict(data)
        margins = Margins(**data.pop("margins", {}))
        mins = MinSamples(**data.pop("min_samples", {}))
        return cls(margins=margins, min_samples=mins, **data)
