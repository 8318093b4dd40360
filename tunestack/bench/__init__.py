"""One bench harness for every benchmark of the stack: how samples are taken, what figures mean, where they go.

- ``tunestack.bench.phases``: warm-up, then alternating phases (every option once per phase, side by side),
  ``time_each`` for per-call milliseconds, ``split`` for each phase's share of the inputs;
- ``tunestack.bench.stats``: exact quantiles, the one result schema (``summarize``: ``n``, ``mean_ms``,
  ``p50_ms``, ``p90_ms``, ``p99_ms``) and the per-phase interval of a difference (``compare``:
  ``diff_p50_ms``, ``diff_p99_ms``);
- ``tunestack.bench.streams``: what a streamed completion's figures mean (vLLM's definitions of TTFT, ITL,
  TPOT, e2e latency, output tokens and goodput), ``StreamTimer`` to take them;
- ``tunestack.bench.report``: ``BenchRun``, the one writer to ``reports/bench-NAME-TIMESTAMP/`` (bench.md,
  bench.json, latency CDF plots), and ``BenchOutput``, the ``--out-dir``/``--out`` fields every bench
  config inherits.

A bench is a config dataclass (parsed by ``tunestack.cli``) and a function that measures with these pieces;
figures, never a pass/fail.
"""

from tunestack.bench.phases import run_phases, split, time_each
from tunestack.bench.report import BenchOutput, BenchReport, BenchRun, markdown_table
from tunestack.bench.stats import (
           Interval,
           blocked_quantile_diff_ci,
           compare,
           format_diff,
           median_interval,
           ms,
           quantile,
           summarize,
)
from tunestack.bench.streams import (
           SLO,
           StreamRecord,
           StreamTimer,
           goodput,
           output_tokens_per_s,
           stream_figures,
)

__all__ = ["SLO", "BenchOutput", "BenchReport", "BenchRun", "Interval", "StreamRecord", "StreamTimer",
           "blocked_quantile_diff_ci", "compare", "format_diff", "goodput", "markdown_table", "median_interval", "ms",
           "output_tokens_per_s", "quantile", "run_phases", "split", "stream_figures", "summarize", "time_each"]
