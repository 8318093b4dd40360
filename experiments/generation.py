"""What a generative arm's answer measures: one relayed token stream's figures, as the router times it.

The router (``serving/router/openai_door.py``, the gRPC stream in ``grpc_door.py``) times each stream it relays
from the moment the request reached it, one event per generated token:

- **TTFT**: request in -> the first token's response from the model (vLLM's definition, seen from the router);
- **ITL**: the gaps between successive tokens' responses (one per token after the first);
- **output tokens**: the completion's tokens as the model counts them;
- **seconds**: request in -> the last token; ``output tokens / seconds`` is the request's tokens per second.

The judge (``experiments.judge``) reads them as sums per unit: mean TTFT = sum of TTFTs / streams, mean ITL =
sum of gaps / gaps, mean output tokens = tokens / streams, tokens per second = tokens / seconds, each a ratio
of sums over units (the delta method, as for mean latency).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunestack.bench.streams import StreamRecord

TTFT_CAP_MS = 60_000.0
"""TTFTs and gaps are clipped here for the means (a finite variance, as latencies are at ``LATENCY_CAP_MS``)."""


@dataclass(frozen=True, slots=True)
class GenerationSample:
    """One stream's figures (see the module docstring)."""

    ttft_ms: float
    itl_ms: tuple[float, ...]
    """Every gap between successive tokens, in order."""
    output_tokens: int
    seconds: float
    """Request in -> last token (> 0)."""

    @classmethod
    def of(cls, record: StreamRecord) -> GenerationSample:
        """From a ``StreamRecord`` whose ``content_s`` holds the arrival of every token's response."""
        ttft = record.ttft_s if record.ttft_s is not None else record.e2e_s
        return cls(min(ttft * 1000.0, TTFT_CAP_MS), tuple(min(g * 1000.0, TTFT_CAP_MS) for g in record.itl_s.tolist()),
                   record.output_tokens, max(record.e2e_s, 1e-6))

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


@dataclass
class GenerationTotals:
    """One arm's generation figures summed over its streams (and its quality feedback), for the per-arm report."""

    streams: int = 0
    ttft_ms_sum: float = 0.0
    gaps: int = 0
    itl_ms_sum: float = 0.0
    output_tokens: int = 0
    seconds: float = 0.0
    quality_n: int = 0
    quality_sum: float = 0.0

    def add(self, sample: GenerationSample) -> None:
        self.streams += 1
        self.ttft_ms_sum += sample.ttft_ms
        self.gaps += len(sample.itl_ms)
        self.itl_ms_sum += sum(sample.itl_ms)
        self.output_tokens += sample.output_tokens
        self.seconds += sample.seconds

    def add_quality(self, score: float) -> None:
        self.quality_n += 1
        self.quality_sum += score

    def to_dict(self) -> dict[str, float | int | None]:
        """Streams and the means the report shows (None where nothing was measured yet)."""
        def ratio(a: float, b: float) -> float | None:
            return a / b if b else None

        return {"streams": self.streams, "ttft_mean_ms": ratio(self.ttft_ms_sum, self.streams),
                "itl_mean_ms": ratio(self.itl_ms_sum, self.gaps), "output_tokens": self.output_tokens,
                "output_tokens_mean": ratio(self.output_tokens, self.streams),
                "tokens_per_s": ratio(self.output_tokens, self.seconds), "quality_n": self.quality_n,
                "quality_mean": ratio(self.quality_sum, self.quality_n)}


GENERATION_FIELDS = ("streams", "ttft_sum", "ttft_sq", "gaps", "itl_sum", "itl_sq", "output_tokens",
                     "output_tokens_sq", "seconds", "rate_sq", "quality_n", "quality_sum", "quality_sq")
"""A unit-table row's generation sums (``experiments.judge.units.UnitTable.generation``): streams, their TTFTs (ms)
and squares, gaps and their sum and sum of squares (ms), output tokens and squares, seconds and the sum of
``tokens^2 / seconds`` (the tokens-per-second ratio's per-request spread), quality feedback count, sum, squares."""


def sample_sums(sample: GenerationSample) -> tuple[float, ...]:
    """One stream's contribution to each of ``GENERATION_FIELDS`` (quality: none; feedback adds it)."""
    gaps = sample.itl_ms
    tokens = float(sample.output_tokens)
    return (1.0, sample.ttft_ms, sample.ttft_ms ** 2, float(len(gaps)), float(sum(gaps)), float(sum(g * g for g in gaps)),
            tokens, tokens * tokens, sample.seconds, tokens * tokens / sample.seconds, 0.0, 0.0, 0.0)


def quality_sums(score: float) -> tuple[float, ...]:
    """One quality feedback's contribution to each of ``GENERATION_FIELDS``."""
    return (0.0,) * 10 + (1.0, score, score * score)


def reference_score(answer: str, reference: str) -> float:
    """The quality of a generated ``answer`` against a ``reference`` text: ROUGE-L F (stemmed) in [0, 1], training's
    scorer (``training.gen_metrics``), so a live answer is scored as the held-out ones were."""
    from training.gen_metrics import rouge_l

    return rouge_l([answer], [reference]) / 100.0
