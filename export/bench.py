"""``python -m export.bench``: torch eager vs ONNX Runtime fp32 vs int8, batch 1 and 16.

Inputs are real held-out review texts, concatenated and cut to exactly ``--tokens`` tokens, so every
backend sees the same 64-token sequences. Prints a table and writes JSON (figures, not a pass/fail).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from export.contract import VARIANT_FILES
from training.data import read_jsonl


def fixed_length_texts(tokenizer, texts: list[str], tokens: int, count: int) -> dict[str, np.ndarray]:
    """``count`` sequences of exactly ``tokens`` tokens built from consecutive real texts."""
    ids: list[int] = []
    rows = []
    body = tokens - 2  # [CLS] ... [SEP]
    for text in texts * 10:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        while len(ids) >= body and len(rows) < count:
            rows.append(tokenizer.build_inputs_with_special_tokens(ids[:body]))
            ids = ids[body:]
        if len(rows) == count:
            break
    input_ids = np.array(rows, dtype=np.int64)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "token_type_ids": np.zeros_like(input_ids)}


def measure(fn, batches: list[dict], warmup: int, iterations: int) -> dict[str, float]:
    for i in range(warmup):
        fn(batches[i % len(batches)])
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        fn(batches[i % len(batches)])
        times.append((time.perf_counter() - start) * 1000)
    t = np.array(times)
    return {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "iterations": iterations}


def run(run_dir: Path, tokens: int, iterations: int, warmup: int, threads: int, batch_sizes: tuple[int, ...]) -> dict:
    merged, onnx_dir = run_dir / "merged", run_dir / "onnx"
    for path in (merged / "model.safetensors", onnx_dir / VARIANT_FILES["fp32"]):
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing; run `make export` first")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    texts = [ex.text for ex in read_jsonl(merged / "heldout.jsonl")]
    data = fixed_length_texts(tokenizer, texts, tokens, 256)
    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()

    def torch_fn(batch):
        with torch.inference_mode():
            model(**{k: torch.from_numpy(v) for k, v in batch.items()})

    backends = {"torch eager fp32": torch_fn}
    for variant, file in VARIANT_FILES.items():
        if (onnx_dir / file).is_file():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(onnx_dir / file), options, providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            backends[f"onnxruntime {variant}"] = lambda b, s=session, n=names: s.run(None, {k: v for k, v in b.items() if k in n})
    results = []
    for batch_size in batch_sizes:
        batches = [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, 256 - batch_size + 1, batch_size)]
        for name, fn in backends.items():
            results.append({"backend": name, "batch_size": batch_size, **measure(fn, batches, warmup, iterations)})
    for row in results:
        ref = next(r for r in results if r["backend"] == "torch eager fp32" and r["batch_size"] == row["batch_size"])
        row["speedup_vs_torch"] = ref["median_ms"] / row["median_ms"]
    return {
        "run": str(run_dir),
        "tokens": tokens,
        "threads": threads,
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "results": results,
    }


def format_table(report: dict) -> str:
    lines = ["| backend | batch | median ms | p99 ms | speed-up vs torch |", "|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['backend']} | {r['batch_size']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['speedup_vs_torch']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run folder with merged/ and onnx/ (default: runs/demo)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per sequence (default: 64)")
    parser.add_argument("--iterations", type=int, default=200, help="timed iterations per backend and batch size (default: 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed warm-up iterations (default: 20)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ONNX Runtime (default: 2)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench-export.json"), help="JSON output path")
    args = parser.parse_args(argv)
    report = run(args.run, args.tokens, args.iterations, args.warmup, args.threads, tuple(int(b) for b in args.batch_sizes.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
