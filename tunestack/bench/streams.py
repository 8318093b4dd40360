"""What a streamed completion's figures mean: vLLM's serving-benchmark definitions, in one place for every
streaming bench and load test of the stack.

The client times each request with ``time.perf_counter()``: when it sent the request, when each chunk of
the stream arrived, and whether that chunk carried content. From those (vLLM's
``benchmarks/backend_request_func.py`` and ``calculate_metrics`` of ``benchmark_serving.py``):

- **TTFT** (time to first token): sent -> the first chunk with content;
- **ITL** (inter-token latency): the gaps between successive chunks with content, one per chunk after the
  first (a server that puts several tokens in one chunk gives fewer, longer gaps);
- **e2e latency**: sent -> the last chunk of the stream (a final usage or finish chunk included);
- **output tokens**: the completion's tokens as the server counts them (OpenAI ``usage.completion_tokens``,
  Triton's ``completion_tokens``); the chunks with content when it does not say;
- **TPOT** (time per output token): ``(e2e - TTFT) / (output tokens - 1)`` for a request with more than one
  output token; such a request counts TPOT 0 against an SLO, as vLLM counts it;
- **goodput**: completed requests per second whose TTFT, TPOT and e2e latency each meet the SLO given
  (``SLO``; a limit left out is not checked);
- **output tokens/s**: every request's output tokens over the wall time of the run that made them.

    timer = StreamTimer()                     # sent now
    for chunk in stream:
        timer.chunk(content=bool(chunk.text))
    record = timer.finish(output_tokens=usage["completion_tokens"])
    figures = stream_figures(records)         # {"ttft": summarize(ms), "itl": ..., "tpot": ..., "e2e": ...}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tunestack.bench.stats import summarize
from tunestack.problems import raise_problems


@dataclass(frozen=True)
class StreamRecord:
    """One streamed request as its client saw it (``time.perf_counter()`` seconds)."""

    sent_s: float
    """When the request was sent."""
    content_s: tuple[float, ...]
    """When each chunk with content arrived, in order."""
    last_s: float
    """When the last chunk of the stream arrived (content or not)."""
    output_tokens: int
    """The completion's tokens (the server's count, else the chunks with content)."""

    @property
    def ttft_s(self) -> float | None:
        """Sent -> first chunk with content; None when no chunk had content."""
        return self.content_s[0] - self.sent_s if self.content_s else None

    @property
    def itl_s(self) -> np.ndarray:
        """Gaps between successive chunks with content."""
        return np.diff(np.asarray(self.content_s, dtype=np.float64))

    @property
    def e2e_s(self) -> float:
        """Sent -> last chunk."""
        return self.last_s - self.sent_s

    @property
    def tpot_s(self) -> float | None:
        """``(e2e - TTFT) / (output tokens - 1)``; None for one output token or fewer."""
        if self.output_tokens <= 1 or self.ttft_s is None:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class StreamTimer:
    """Times one streamed request: made when it is sent, told about each chunk, finished into a record."""

    sent_s: float = field(default_factory=time.perf_counter)
    content_s: list[float] = field(default_factory=list)
    last_s: float | None = None

    def chunk(self, content: bool, at: float | None = None) -> None:
        """A chunk arrived now (or ``at``); ``content``: it carried text or a token."""
        at = time.perf_counter() if at is None else at
        self.last_s = at
        if content:
            self.content_s.append(at)

    def finish(self, output_tokens: int | None = None) -> StreamRecord:
        """The record; ``output_tokens`` as the server counted them (default: the chunks with content)."""
        if self.last_s is None:
            raise ValueError("the stream ended without a chunk")
        tokens = len(self.content_s) if output_tokens is None else int(output_tokens)
        return StreamRecord(self.sent_s, tuple(self.content_s), self.last_s, tokens)


@dataclass(frozen=True)
class SLO:
    """Service-level objectives of one request, in milliseconds; None: not checked."""

    ttft_ms: float | None = None
    """Time to first token at most this."""
    tpot_ms: float | None = None
    """Time per output token at most this."""
    e2e_ms: float | None = None
    """End-to-end latency at most this."""

    def __post_init__(self) -> None:
        raise_problems([f"{name} must be > 0 or None, got {value}" for name, value in self.limits().items()
                        if value <= 0], ValueError, "SLO")

    def limits(self) -> dict[str, float]:
        return {name: value for name, value in (("ttft_ms", self.ttft_ms), ("tpot_ms", self.tpot_ms),
                                                ("e2e_ms", self.e2e_ms)) if value is not None}

    def met(self, record: StreamRecord) -> bool:
        """Every limit met (vLLM: TPOT of a one-token request counts 0; a request without content fails)."""
        if record.ttft_s is None:
            return False
        values = {"ttft_ms": record.ttft_s * 1000, "tpot_ms": (record.tpot_s or 0.0) * 1000,
                  "e2e_ms": record.e2e_s * 1000}
        return all(values[name] <= limit for name, limit in self.limits().items())


def goodput(records: Sequence[StreamRecord], slo: SLO, wall_s: float) -> float:
    """Requests per second that met ``slo``, over ``wall_s`` seconds."""
    if wall_s <= 0:
        raise ValueError(f"wall_s must be > 0, got {wall_s}")
    return sum(slo.met(r) for r in records) / wall_s


def output_tokens_per_s(records: Sequence[StreamRecord], wall_s: float) -> float:
    """Every record's output tokens over ``wall_s`` seconds."""
    if wall_s <= 0:
        raise ValueError(f"wall_s must be > 0, got {wall_s}")
    return sum(r.output_tokens for r in records) / wall_s


def stream_figures(records: Sequence[StreamRecord]) -> dict:
    """``requests``, ``output_tokens`` and the latency summaries (``tunestack.bench.stats.summarize``, ms) of
    TTFT, ITL (every gap of every request), TPOT (requests with more than one token) and e2e latency."""
    ttft = [r.ttft_s * 1000 for r in records if r.ttft_s is not None]
    tpot = [r.tpot_s * 1000 for r in records if r.tpot_s is not None]
    itl = np.concatenate([r.itl_s for r in records]) * 1000 if records else np.empty(0)
    return {"requests": len(records), "output_tokens": sum(r.output_tokens for r in records),
            "ttft": summarize(ttft), "itl": summarize(itl), "tpot": summarize(tpot),
            "e2e": summarize([r.e2e_s * 1000 for r in records])}
