"""The generation bench's figures: one row per arm, the batching gain, the product's goals, and the Markdown.

A row holds tokens/s (the mean of its phases, and each phase's), TTFT, ITL, TPOT and e2e latency
(``tunestack.bench.streams``: vLLM's definitions; ``tunestack.bench.stats.summarize`` schema, ms), the TTFT
p50 of each phase, goodput under the run's SLO, and the token counts. Ratios between arms are the mean of
per-phase ratios (arms of one phase ran side by side) with their range, so a slow minute of the machine
lands on both sides of a ratio.

The goals (``GOALS``), each ``{"goal", "op", "target", "value", "met", "by_path", "note"}`` in the report's
``ratios``; ``value`` is the worst served path's (every served path must meet a goal), None with a ``note``
when the arms it needs were not measured:

- ``served_vs_in_process_c1``: tokens/s served (Triton directly or behind the router) at 1 stream / the
  in-process loop's (>= 0.8);
- ``served_vs_transformers_c8``: tokens/s served at 8 streams / the transformers baseline's (>= 2);
- ``router_ttft_p50_over_in_process_ms``: TTFT through Triton + the router minus in-process, at 1 stream
  (<= 5 ms): the median of the paired differences from the interleaved rounds (``ttft_differences``), with its
  distribution-free 95 % interval.

The interleaved rounds (``serving.llm_bench_paths.interleaved_ttft``) stream one request at a time, a path
and in-process in turn on one prompt, so each pair shares its prompt (a prompt's own prefill varies far more
than the few milliseconds a hop costs) and its second of the machine (an arm's block of requests runs seconds
or minutes after another's, and a machine whose speed drifts in between would land in a difference of
blocks). ``ttft_differences`` gives every path against in-process.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunestack.bench import markdown_table, median_interval
from tunestack.bench.streams import SLO, StreamRecord, goodput, output_tokens_per_s, stream_figures

IN_PROCESS = "in-process"
"""The decode loop's scheduler called directly: the limit."""
SERVED = ("http", "grpc")
"""Triton's paths (generate_stream, gRPC stream)."""
BASELINE = "transformers"
"""The peer a user would write."""
ROUTER = "router"
"""The router's OpenAI-compatible arm (Triton behind the router), when there is one."""
NO_TTFT_PAIRS = ("no interleaved TTFT of the router and in-process: needs router and in-process in --transports "
                 "and --ttft-rounds > 0")
"""The router goal's note while the run has no such pairs."""
PEER_BATCHING = "none"
"""The peers' batching: each request decodes alone (a thread per request)."""


def arm_name(path: str, batching: str, concurrency: int) -> str:
    return f"{path} / {batching} / {concurrency}"


def summarize_arm(results: Sequence[dict], slo: SLO) -> dict:
    """One arm's row from its phases' ``{"records", "wall_s"}``."""
    records: list[StreamRecord] = [r for result in results for r in result["records"]]
    rates = [output_tokens_per_s(r["records"], r["wall_s"]) for r in results]
    good = [goodput(r["records"], slo, r["wall_s"]) for r in results]
    figures = stream_figures(records)
    per_request = [r.output_tokens for r in records]
    return {"tokens_per_s": round(float(np.mean(rates)), 2), "tokens_per_s_by_phase": [round(x, 2) for x in rates],
            "tokens": figures["output_tokens"], "requests": figures["requests"],
            "tokens_per_request": [min(per_request), max(per_request)],
            **{k: figures[k] for k in ("ttft", "itl", "tpot", "e2e")},
            "ttft_p50_ms_by_phase": [stream_figures(r["records"])["ttft"]["p50_ms"] for r in results],
            "goodput_per_s": round(float(np.mean(good)), 3),
            "good_requests": sum(slo.met(r) for r in records)}


def phase_ratio(numerator: dict, denominator: dict) -> dict:
    """Mean, low and high of the per-phase tokens/s ratios of two rows."""
    ratios = [a / b for a, b in zip(numerator["tokens_per_s_by_phase"], denominator["tokens_per_s_by_phase"],
                                    strict=True)]
    return {"ratio": round(float(np.mean(ratios)), 3), "low": round(min(ratios), 3), "high": round(max(ratios), 3)}


def batching_gain(rows: dict[str, dict]) -> list[dict]:
    """Per path and concurrency: tokens/s with continuous batching over a thread per stream."""
    gains = []
    for row in rows.values():
        other = rows.get(arm_name(row["path"], "none", row["concurrency"]))
        if row["batching"] == "continuous" and other is not None:
            gains.append({"path": row["path"], "concurrency": row["concurrency"], **phase_ratio(row, other)})
    return gains


@dataclass(frozen=True)
class Goal:
    """A figure the product must reach."""

    key: str
    text: str
    op: str
    """``>=`` or ``<=``."""
    target: float

    def entry(self, by_path: dict[str, dict], note: str | None = None) -> dict:
        """The goal's report entry; ``by_path``: path -> ``{"value", ...}``; the value is the worst path's."""
        values = [v["value"] for v in by_path.values()]
        value = (min(values) if self.op == ">=" else max(values)) if values else None
        met = None if value is None else {">=": operator.ge, "<=": operator.le}[self.op](value, self.target)
        return {"goal": self.text, "op": self.op, "target": self.target, "value": value, "met": met,
                "by_path": by_path, "note": note}


GOALS = (Goal("served_vs_in_process_c1", "tokens/s served (Triton, router) at 1 stream / in-process at 1 stream",
              ">=", 0.8),
         Goal("served_vs_transformers_c8", "tokens/s served (Triton, router) at 8 streams / the transformers "
              "baseline at 8", ">=", 2.0),
         Goal("router_ttft_p50_over_in_process_ms",
              "TTFT through Triton + router minus in-process, at 1 stream: median of the paired "
              "per-request differences (ms)", "<=", 5.0))


def _ratio_goal(goal: Goal, rows: dict, served: str, concurrency: int, path: str, batching: str) -> dict:
    base = rows.get(arm_name(path, batching, concurrency))
    by_path = {p: {"value": r["ratio"], **r} for p in (*SERVED, ROUTER)
               if (row := rows.get(arm_name(p, served, concurrency))) and base
               for r in [phase_ratio(row, base)]}
    note = None if by_path else (f"needs {arm_name(path, batching, concurrency)} and a served arm "
                                 f"({' or '.join(arm_name(p, served, concurrency) for p in (*SERVED, ROUTER))})")
    return goal.entry(by_path, note)


def ttft_differences(interleaved: dict[str, dict[str, list[float]]]) -> list[dict]:
    """From the interleaved rounds (path -> its TTFTs and in-process's in the same rounds, ms): each path minus
    in-process, as the median of the per-round differences with its 95 % interval (``median_interval``)."""
    out = []
    for path, pair in interleaved.items():
        median, low, high = median_interval([a - b for a, b in zip(pair["ttft_ms"], pair["reference_ms"], strict=True)])
        out.append({"path": path, "vs": IN_PROCESS, "median_ms": median, "low": low, "high": high,
                    "pairs": len(pair["ttft_ms"])})
    return out


def _router_goal(goal: Goal, differences: list[dict]) -> dict:
    found = [d for d in differences if d["path"] == ROUTER and d["vs"] == IN_PROCESS]
    if not found:
        return goal.entry({}, NO_TTFT_PAIRS)
    d = found[0]
    return goal.entry({ROUTER: {"value": d["median_ms"], "low": d["low"], "high": d["high"], "requests": d["pairs"]}})


def goals(rows: dict[str, dict], served: str, differences: list[dict]) -> dict[str, dict]:
    """Every goal of ``GOALS`` from the rows and the interleaved rounds' ``ttft_differences``; ``served``: the
    batching mode Triton serves (continuous)."""
    first, second, third = GOALS
    return {first.key: _ratio_goal(first, rows, served, 1, IN_PROCESS, served),
            second.key: _ratio_goal(second, rows, served, 8, BASELINE, PEER_BATCHING),
            third.key: _router_goal(third, differences)}


def _cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def render(document: dict) -> str:
    rows, c, slo = document["arms"], document["config"], document["slo"]
    table = markdown_table(
        ["path", "batching", "streams", "tokens/s", "TTFT p50 / p99 ms", "ITL p50 / p99 ms", "TPOT p50 ms",
         "e2e p50 ms", "goodput req/s", "tokens"],
        [[r["path"], r["batching"], r["concurrency"], f"{r['tokens_per_s']:.1f}",
          f"{_cell(r['ttft']['p50_ms'])} / {_cell(r['ttft']['p99_ms'])}",
          f"{_cell(r['itl']['p50_ms'])} / {_cell(r['itl']['p99_ms'])}", _cell(r["tpot"]["p50_ms"]),
          _cell(r["e2e"]["p50_ms"]), f"{r['goodput_per_s']:.2f}", r["tokens"]] for r in rows.values()], "lllrrrrrrr")
    parts = [f"{c['new_tokens']} tokens per completion (past EOS), {c['requests']} completions per stream per phase, "
             f"{c['phases']} phases, variant {c['variant']} of {c['onnx_dir']}; peers on {document['merged_dir']}. "
             f"Goodput: requests per second with TTFT <= {slo['ttft_ms']} ms and TPOT <= {slo['tpot_ms']} ms.",
             table]
    if document["batching_gain"]:
        parts += ["Iteration-level batching against a thread per stream (tokens/s ratio):",
                  markdown_table(["path", "streams", "continuous / none tokens/s", "per-phase range"],
                                 [[g["path"], g["concurrency"], g["ratio"], f"{g['low']} - {g['high']}"]
                                  for g in document["batching_gain"]], "lrrr")]
    if document["ttft_differences"]:
        parts += [f"TTFT at 1 stream, each path paired with in-process on one prompt, alternating request by request "
                  f"({c['ttft_rounds']} rounds per path): the median of the paired differences [95 % interval]:",
                  markdown_table(["path", "minus", "median ms", "95 % interval", "pairs"],
                                 [[d["path"], d["vs"], d["median_ms"], f"[{_cell(d['low'])}, {_cell(d['high'])}]",
                                   d["pairs"]] for d in document["ttft_differences"]], "llrrr")]
    parts += ["Goals (value: the worst served path):",
              markdown_table(["goal", "target", "value", "by path", "met"],
                             [[g["goal"], f"{g['op']} {g['target']}", "-" if g["value"] is None else g["value"],
                               ", ".join(f"{p} {v['value']}" for p, v in g["by_path"].items()) or (g["note"] or ""),
                               {True: "yes", False: "no", None: "-"}[g["met"]]]
                              for g in document["ratios"].values()], "lrrll")]
    return "\n\n".join(parts) + "\n"
