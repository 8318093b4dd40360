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
  (<= 5 ms): the median of the paired differences, request by request (in a phase every arm streams the same
  prompts in the same order, so each pair shares its prompt and its prefill cost), with its distribution-free
  95 % interval: the ``router`` arm's.
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
NO_ROUTER = "no router arm: add router to --transports (the router's OpenAI door in front of Triton)"
"""The router goal's note while there is no router arm."""
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
            "ttft_ms_by_request": [[round(rec.ttft_s * 1000, 3) for rec in r["records"]] for r in results],
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


def _router_goal(goal: Goal, rows: dict, served: str) -> dict:
    router, base = rows.get(arm_name(ROUTER, served, 1)), rows.get(arm_name(IN_PROCESS, served, 1))
    if router is None:
        return goal.entry({}, NO_ROUTER)
    if base is None:
        return goal.entry({}, f"needs {arm_name(IN_PROCESS, served, 1)}")
    diffs = [a - b for ra, rb in zip(router["ttft_ms_by_request"], base["ttft_ms_by_request"], strict=True)
             for a, b in zip(ra, rb, strict=True)]
    median, low, high = median_interval(diffs)
    return goal.entry({ROUTER: {"value": median, "low": low, "high": high, "requests": len(diffs)}})


def goals(rows: dict[str, dict], served: str) -> dict[str, dict]:
    """Every goal of ``GOALS`` from the rows; ``served``: the batching mode Triton serves (continuous)."""
    first, second, third = GOALS
    return {first.key: _ratio_goal(first, rows, served, 1, IN_PROCESS, served),
            second.key: _ratio_goal(second, rows, served, 8, BASELINE, PEER_BATCHING),
            third.key: _router_goal(third, rows, served)}


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
    parts += ["Goals (value: the worst served path):",
              markdown_table(["goal", "target", "value", "by path", "met"],
                             [[g["goal"], f"{g['op']} {g['target']}", "-" if g["value"] is None else g["value"],
                               ", ".join(f"{p} {v['value']}" for p, v in g["by_path"].items()) or (g["note"] or ""),
                               {True: "yes", False: "no", None: "-"}[g["met"]]]
                              for g in document["ratios"].values()], "lrrll")]
    return "\n\n".join(parts) + "\n"
