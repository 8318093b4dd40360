"""``python -m export.generate_bench``: tokens/s of the decode loop (``export.generate``), fp32 vs int8, batch 1/2/4.

Each round decodes ``--new-tokens`` tokens past the EOS (``ignore_eos``) for ``batch`` held-out prompts
decoded together, greedy. Per variant and batch size it reports the median over rounds of the time to the
first tokens (the prefill), the decode time per step, and the tokens/s of the whole round (all sequences,
prefill included) and of one sequence. Prints a table and writes ``reports/bench-generate-TIMESTAMP/``
(the bench harness's writer): figures, not a pass/fail; on a shared machine they move with its load.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.contract import GENERATIVE_VARIANT_FILES
from export.decoding import SamplingParams
from export.generate import Generator
from tunestack import names
from tunestack.bench import BenchOutput, BenchRun, markdown_table
from tunestack.cli import parse_dataclass


@dataclass
class GenerateBenchConfig(BenchOutput):
    """Decode-loop speed on an exported causal LM."""

    onnx_dir: Path = Path("runs/llm/onnx")
    """The export folder (model.onnx, model.int8.onnx, tokenizer.json, generation.json, heldout.jsonl)."""
    variants: tuple[str, ...] = ("fp32", "int8")
    """Variants to time (files of export.contract.GENERATIVE_VARIANT_FILES)."""
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    """Sequences decoded together per round."""
    new_tokens: int = 32
    """Tokens generated per sequence per round (past the EOS token)."""
    rounds: int = 5
    """Timed rounds per variant and batch size (each on the next held-out prompts), after one untimed."""
    threads: int = 0
    """ONNX Runtime intra-op threads (0: its default, every core)."""


def _round(gen: Generator, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token of every sequence, seconds in all, tokens generated) of one batched decode."""
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    first, count = None, 0
    for _, _token in gen.stream_batch(prompts, [params] * len(prompts)):
        count += 1
        if first is None and count == len(prompts):
            first = time.perf_counter() - start
    return first, time.perf_counter() - start, count


def bench_variant(gen: Generator, prompts: list[list[int]], cfg: GenerateBenchConfig) -> dict:
    rows = {}
    for batch in cfg.batch_sizes:
        _round(gen, prompts[:batch], cfg.new_tokens)  # warm-up
        firsts, totals, tokens = [], [], 0
        for r in range(cfg.rounds):
            chunk = [prompts[(r * batch + k) % len(prompts)] for k in range(batch)]
            first, total, tokens = _round(gen, chunk, cfg.new_tokens)
            firsts.append(first)
            totals.append(total)
        first, total = float(np.median(firsts)), float(np.median(totals))
        rows[str(batch)] = {"prefill_ms": 1000 * first, "decode_ms_per_step": 1000 * (total - first) / (cfg.new_tokens - 1),
                            "tokens_per_s": tokens / total, "tokens_per_s_per_sequence": tokens / batch / total,
                            "round_s": total, "rounds": cfg.rounds}
    return rows


def run(cfg: GenerateBenchConfig) -> dict:
    rows = [json.loads(line) for line in (cfg.onnx_dir / names.HELDOUT_FILE).read_text().splitlines() if line.strip()]
    report = {"onnx_dir": str(cfg.onnx_dir), "new_tokens": cfg.new_tokens, "threads": cfg.threads, "variants": {}}
    for variant in cfg.variants:
        gen = Generator.from_folder(cfg.onnx_dir, GENERATIVE_VARIANT_FILES[variant], cfg.threads)
        prompts = [gen.encode(r["prompt"]) for r in rows]
        report["variants"][variant] = bench_variant(gen, prompts, cfg)
    return report


def format_table(report: dict) -> str:
    """Per variant and batch size: prefill ms, decode ms per step, tokens/s in all and per sequence."""
    return markdown_table(
        ["variant", "batch", "prefill ms", "decode ms/step", "tokens/s", "tokens/s per sequence"],
        [(variant, batch, f"{r['prefill_ms']:.1f}", f"{r['decode_ms_per_step']:.1f}", f"{r['tokens_per_s']:.1f}",
          f"{r['tokens_per_s_per_sequence']:.1f}") for variant, rows in report["variants"].items()
         for batch, r in rows.items()])


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(GenerateBenchConfig, argv, "python -m export.generate_bench")
    bench_run = BenchRun("generate", "The causal LM's decode loop: fp32 vs int8 by batch size", cfg)
    report = bench_run.write(run(cfg), format_table)
    print(format_table(report.data))
    print(f"\nwritten: {report.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
