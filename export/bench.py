"""``python -m export.bench``: torch eager vs ONNX Runtime fp32 vs int8, batch 1 and 16.

Inputs are real held-out review texts, concatenated and cut to exactly ``--tokens`` tokens, so every
backend sees the same 64-token sequences. Prints a table and writes JSON (figures, not a pass/fail).

``--served-path``: the served model's own code (``triton_model/model.py``: tokenizers + ONNX Runtime +
softmax) on real mixed-length reviews, per-item time at batch 1 vs batch 16, with the batch padded to
its longest text (before) vs run in length buckets (after), for every exported variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from export.config import serving_defaults
from export.contract import CONTRACT, VARIANT_FILES
from export.onnx import UNFUSED_FILE
from export.publish import SETTINGS_FILE, TOKENIZER_FILES
from export.triton_model.model import TextClassifier
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


SERVED_MODES = {"batch 1": (1, None), "batch 16, padded to the longest (before)": (16, None),
                "batch 16, length buckets (after)": (16, "buckets")}
"""Row label -> (batch size, padding): None pads the batch to its longest text, as model.py did before."""


def _version_folder(onnx_dir: Path, onnx_file: str, folder: Path) -> Path:
    """A folder laid out like a published version (links, nothing copied) for ``TextClassifier``."""
    folder.mkdir(parents=True)
    max_length = json.loads((onnx_dir / "training_config.json").read_text())["max_length"]
    (folder / SETTINGS_FILE).write_text(json.dumps({"max_length": max_length, "onnx_file": onnx_file}))
    for name in (*TOKENIZER_FILES, CONTRACT.label_map_file, onnx_file):
        if (onnx_dir / name).is_file():
            (folder / name).symlink_to((onnx_dir / name).resolve())
    return folder


def served_path(run_dir: Path, threads: int, texts_count: int, warmup: int) -> dict:
    """Per-item milliseconds of ``TextClassifier.predict`` at batch 1 and 16 on real held-out reviews
    (in their file order, so lengths are mixed), for each variant and padding mode."""
    onnx_dir = run_dir / "onnx"
    texts = [ex.text for ex in read_jsonl(run_dir / "merged" / "heldout.jsonl")][:texts_count]
    files = {f"{v}": f for v, f in VARIANT_FILES.items() if (onnx_dir / f).is_file()}
    if (onnx_dir / UNFUSED_FILE).is_file():
        files = {"fp32 unfused": UNFUSED_FILE, **files}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tunestack-bench-") as tmp:
        for variant, file in files.items():
            folder = _version_folder(onnx_dir, file, Path(tmp) / variant.replace(" ", "-"))
            models = {None: TextClassifier(folder, threads, max_padding=None), "buckets": TextClassifier(folder, threads)}
            for mode, (batch_size, padding) in SERVED_MODES.items():
                model = models[padding]
                batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
                for batch in batches[:warmup]:
                    model.predict(batch)
                times = []
                for batch in batches:
                    start = time.perf_counter()
                    model.predict(batch)
                    times.append((time.perf_counter() - start) * 1000 / len(batch))
                t = np.array(times)
                rows.append({"variant": variant, "mode": mode, "batch_size": batch_size, "batches": len(batches),
                             "per_item_median_ms": float(np.median(t)), "per_item_mean_ms": float(t.mean()),
                             "items_per_s": float(1000 / t.mean())})
    for row in rows:
        single = next(r for r in rows if r["variant"] == row["variant"] and r["batch_size"] == 1)
        row["per_item_vs_batch1"] = row["per_item_mean_ms"] / single["per_item_mean_ms"]
    return {"run": str(run_dir), "threads": threads, "texts": len(texts), "machine": _machine(), "results": rows}


def _machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "onnxruntime": ort.__version__}


def format_served_table(report: dict) -> str:
    lines = [f"per-item time of the served model code, {report['texts']} real held-out reviews, "
             f"{report['threads']} ORT thread(s):", "",
             "| variant | batch | per-item median ms | per-item mean ms | items/s | per item vs batch 1 |",
             "|---|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['variant']} | {r['mode']} | {r['per_item_median_ms']:.3f} | {r['per_item_mean_ms']:.3f} | "
                     f"{r['items_per_s']:.0f} | {r['per_item_vs_batch1']:.2f}x |")
    return "\n".join(lines)


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
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for torch and ONNX Runtime (default: 2; with --served-path, the "
                             "intra-op threads `make export` publishes for this machine's core count)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output path (default: reports/bench-export.json, with --served-path reports/bench-export-served.json)")
    parser.add_argument("--served-path", action="store_true",
                        help="bench the served model code instead: batch 1 vs 16 per item, padded vs length buckets, every variant")
    parser.add_argument("--texts", type=int, default=512, help="--served-path: held-out reviews to run (default: 512)")
    args = parser.parse_args(argv)
    if args.served_path:
        threads = args.threads or serving_defaults(os.cpu_count() or 1)["intra_op_threads"]
        report = served_path(args.run, threads, args.texts, max(1, args.warmup // 4))
        out = args.out or Path("reports/bench-export-served.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(format_served_table(report))
        print(f"\nwritten: {out}")
        return 0
    args.out = args.out or Path("reports/bench-export.json")
    report = run(args.run, args.tokens, args.iterations, args.warmup, args.threads or 2, tuple(int(b) for b in args.batch_sizes.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
