"""The generative load test's figures: per arm, vLLM's serving-benchmark metrics over every streamed completion.

``stream_summary`` reads the run's ``PREFIX_streams-*.jsonl`` (``loadtests.chat``) and gives, per arm
(``tunestack.bench.streams``' definitions; vLLM's ``benchmarks/benchmark_serving.py``, ``calculate_metrics``):
completions and failures, output tokens, output tokens/s and goodput (completions per second within the SLO:
``--slo-ttft-ms``, ``--slo-tpot-ms``) over the run's wall time (first completion sent -> last chunk received,
the same span for every arm: they ran side by side), and TTFT, ITL, TPOT and e2e latency
(``tunestack.bench.stats.summarize``: n, mean, exact p50/p90/p99 in ms) of the completed ones. A failed
completion counts in ``failures`` and in no latency. ``stream_plots`` draws the TTFT and ITL CDFs per arm and
output tokens/s over time per arm; ``stream_markdown`` the report's section.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from loadtests import plots
from loadtests.chat import LoggedStream, read_streams
from tunestack.bench.streams import SLO, goodput, output_tokens_per_s, stream_figures

METRICS = ("ttft", "itl", "tpot", "e2e")
"""The latency figures of each arm, in ``stream_figures``' names."""
TITLES = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "e2e latency"}


def _span(streams: list[LoggedStream]) -> tuple[float, float]:
    start = min(s.sent for s in streams)
    end = max(s.sent + (s.record.last_s if s.record else 0.0) for s in streams)
    return start, end


def stream_summary(prefix: Path, slo: SLO) -> dict | None:
    """The figures per arm (see the module docstring); None when the run streamed nothing."""
    streams = read_streams(prefix)
    if not streams:
        return None
    start, end = _span(streams)
    wall = max(end - start, 1e-9)
    arms = {}
    for name in sorted({s.name for s in streams}):
        mine = [s for s in streams if s.name == name]
        records = [s.record for s in mine if s.ok and s.record is not None]
        figures = stream_figures(records)
        arms[name] = {"requests": len(mine), "failures": len(mine) - len(records),
                      "output_tokens": figures["output_tokens"],
                      "tokens_per_s": round(output_tokens_per_s(records, wall), 3),
                      "goodput_rps": round(goodput(records, slo, wall), 3),
                      **{k: figures[k] for k in METRICS}}
    return {"slo": slo.limits(), "wall_s": round(wall, 3), "arms": arms}


def _cdf(values: np.ndarray) -> tuple[list[float], list[float]]:
    """The exact empirical CDF of ``values`` (ms), as steps from 0."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        return [], []
    return [max(float(x[0]), 1e-3)] + [max(float(v), 1e-3) for v in x], [0.0] + [(i + 1) / x.size for i in range(x.size)]


def tokens_over_time(streams: list[LoggedStream], bin_s: float = 1.0) -> dict[str, dict[str, list[float]]]:
    """Per arm, output tokens/s in ``bin_s`` bins from the run's start: each completion's tokens spread evenly
    over its chunks with content, placed where those chunks arrived."""
    start, end = _span(streams)
    bins = max(1, math.ceil((end - start) / bin_s))
    out = {}
    for name in sorted({s.name for s in streams}):
        counts = np.zeros(bins)
        for s in streams:
            if s.name != name or not s.ok or s.record is None or not s.record.content_s:
                continue
            at = (s.sent - start + np.asarray(s.record.content_s)) / bin_s
            np.add.at(counts, np.minimum(at.astype(int), bins - 1), s.record.output_tokens / len(at))
        out[name] = {"t": [(i + 0.5) * bin_s for i in range(bins)], "tokens_per_s": list(counts / bin_s)}
    return out


def stream_plots(prefix: Path, out_dir: Path) -> dict[str, str]:
    """``ttft_cdf.png``, ``itl_cdf.png`` and ``tokens_over_time.png``: {title: file name}."""
    streams = [s for s in read_streams(prefix)]
    done = [s for s in streams if s.ok and s.record is not None]
    if not done:
        return {}
    names = sorted({s.name for s in done})
    images = {}
    for key, getter, label in (("ttft", lambda r: [r.ttft_s * 1000] if r.ttft_s is not None else [], "time to first token"),
                               ("itl", lambda r: list(r.itl_s * 1000), "inter-token latency")):
        curves = {n: _cdf(np.asarray([v for s in done if s.name == n for v in getter(s.record)])) for n in names}
        curves = {n: c for n, c in curves.items() if c[0]}
        if curves:
            plots.latency_cdf(curves, out_dir / f"{key}_cdf.png", f"{label.capitalize()} CDF per arm (client side)",
                              xlabel=f"{label} (ms, log scale)")
            images[f"{TITLES[key]} CDF per arm"] = f"{key}_cdf.png"
    plots.tokens_over_time(tokens_over_time(done), out_dir / "tokens_over_time.png",
                           "Output tokens/s over time, per arm")
    images["output tokens/s over time per arm"] = "tokens_over_time.png"
    return images


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def stream_markdown(generation: dict) -> list[str]:
    """The report's section on the streamed completions."""
    slo = ", ".join(f"{k.removesuffix('_ms').upper()} <= {v:g} ms" for k, v in generation["slo"].items())
    out = ["## Streamed completions per arm (vLLM's definitions)", "",
           f"Over {generation['wall_s']:.1f} s (first completion sent -> last chunk). TTFT: sent -> first chunk with "
           "content; ITL: gaps between chunks with content; TPOT: (e2e - TTFT) / (output tokens - 1); e2e: sent -> "
           f"last chunk; goodput: completions per second within the SLO ({slo}).", "",
           "| arm | completions | failures | output tokens | tokens/s | goodput (req/s) |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, a in generation["arms"].items():
        out.append(f"| {name} | {a['requests']} | {a['failures']} | {a['output_tokens']} | {a['tokens_per_s']:.1f} "
                   f"| {a['goodput_rps']:.2f} |")
    out += ["", "| arm | figure | n | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, a in generation["arms"].items():
        for key in METRICS:
            f = a[key]
            out.append(f"| {name} | {TITLES[key]} | {f['n']} | {_ms(f['p50_ms'])} | {_ms(f['p90_ms'])} "
                       f"| {_ms(f['p99_ms'])} | {_ms(f['mean_ms'])} |")
    return out + [""]
