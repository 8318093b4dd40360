"""``python -m export.generate_bench``: tokens/s of the decode loop (``export.generate``), fp32 vs int8, batch 1/2/4.

Each round decodes ``--new-tokens`` tokens past the EOS (``ignore_eos``) for ``batch`` held-out prompts
decoded together, greedy. Per variant and batch size it reports the median over rounds of the time to the
first tokens (the prefill), the decode time per step, and the tokens/s of the whole round (all sequences,
prefill included) and of one sequence. Prints a table and writes JSON: figures, not a pass/fail; on a
shared machine they move with its load.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.contract import GENERATIVE_VARIANT_FILES
from export.decoding import SamplingParams
from export.generate import Generator
from tunestack import names
from tunestack.cli import parse_dataclass


@dataclass
class GenerateBenchConfig:
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
    out: Path = Path("reports/bench-generate.json")
    """Where the JSON goes."""


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
    report = {"onnx_dir": str(cfg.onnx_dir), "new_tokens": cfg.new_tokens, "threads": cfg.threads,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "machine": platform.platform(),
              "variants": {}}
    for variant in cfg.variants:
        gen = Generator.from_folder(cfg.onnx_dir, GENERATIVE_VARIANT_FILES[variant], cfg.threads)
        prompts = [gen.encode(r["prompt"]) for r in rows]
        report["variants"][variant] = bench_variant(gen, prompts, cfg)
    report["load_average_after"] = os.getloadavg()
    return report


def format_table(report: dict) -> str:
    lines = [f"{'variant':<8} {'batch':>5} {'prefill ms':>10} {'decode ms/step':>14} {'tokens/s':>9} {'tok/s/seq':>9}"]
    for variant, rows in report["variants"].items():
        for batch, r in rows.items():
            lines.append(f"{variant:<8} {batch:>5} {r['prefill_ms']:>10.1f} {r['decode_ms_per_step']:>14.1f} "
                         f"{r['tokens_per_s']:>9.1f} {r['tokens_per_s_per_sequence']:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(GenerateBenchConfig, argv, "python -m export.generate_bench")
    report = run(cfg)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\nload average before / after: {report['load_average']} / {report['load_average_after']}; written: {cfg.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
