"""``python -m export.bench``: torch eager vs ONNX Runtime fp32 vs int8, batch 1 and 16.

Inputs are real held-out review texts, concatenated and cut to exactly ``--tokens`` tokens, so every
backend sees the same 64-token sequences. The backends alternate in ``--phases`` phases (each runs its
share of the iterations in turn, on the same batches; ``tunestack.bench.run_phases``), so a slow minute of
the machine lands on all of them; each ONNX backend's difference from torch has a per-phase interval.
Prints a table and writes ``reports/bench-export-TIMESTAMP/`` (figures, not a pass/fail).

``--served-path``: the served model's own code (``triton_model/model.py``: tokenizers + ONNX Runtime +
softmax) on real mixed-length reviews, per-item time at batch 1 vs batch 16, with the batch padded to
its longest text vs run in length buckets, for every exported variant, alternating in the same way
(``reports/bench-export-served-TIMESTAMP/``; the figures are milliseconds per item).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
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
from tunestack import names
from tunestack.bench import (
    BenchOutput,
    BenchRun,
    compare,
    format_diff,
    markdown_table,
    run_phases,
    split,
    summarize,
    time_each,
)
from tunestack.cli import parse_dataclass
from tunestack.layout import RunLayout
from tunestack.problems import raise_problems

TORCH = "torch eager fp32"
"""The backend the others are compared with."""


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


def measure(backends: dict, batches: list[dict], cfg: ExportBenchConfig
            ) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Milliseconds per call of every backend: ``cfg.warmup`` untimed calls each, then ``cfg.iterations`` in
    ``cfg.phases`` alternating phases, every backend on the same batches within a phase; (all of them, and
    by phase)."""
    per_phase = max(1, cfg.iterations // cfg.phases)

    def phase_of(fn):
        return lambda k: time_each(fn, [batches[(k * per_phase + i) % len(batches)] for i in range(per_phase)])

    blocks = run_phases({name: phase_of(fn) for name, fn in backends.items()}, cfg.phases,
                        warmup=lambda name: [backends[name](batches[i % len(batches)]) for i in range(cfg.warmup)])
    return {name: np.concatenate(b) for name, b in blocks.items()}, blocks


def run(cfg: ExportBenchConfig, threads: int) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(the figures, milliseconds by backend for each batch size)."""
    layout = RunLayout(cfg.run)
    for path in (layout.merged / "model.safetensors", layout.onnx / VARIANT_FILES["fp32"]):
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing; run `make export` first")
    tokenizer = AutoTokenizer.from_pretrained(layout.merged)
    texts = [ex.text for ex in read_jsonl(layout.heldout)]
    data = fixed_length_texts(tokenizer, texts, cfg.tokens, 256)
    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(layout.merged).eval()

    def torch_fn(batch):
        with torch.inference_mode():
            model(**{k: torch.from_numpy(v) for k, v in batch.items()})

    backends = {TORCH: torch_fn}
    for variant, file in VARIANT_FILES.items():
        if (layout.onnx / file).is_file():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(layout.onnx / file), options, providers=["CPUExecutionProvider"])
            inputs = {i.name for i in session.get_inputs()}
            backends[f"onnxruntime {variant}"] = lambda b, s=session, n=inputs: s.run(None, {k: v for k, v in b.items() if k in n})
    results, samples = [], {}
    for batch_size in cfg.batch_sizes:
        batches = [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, 256 - batch_size + 1, batch_size)]
        times, blocks = measure(backends, batches, cfg)
        samples[f"latency_cdf_batch_{batch_size}"] = times
        torch_p50 = summarize(times[TORCH])["p50_ms"]
        for name, x in times.items():
            row = {"backend": name, "batch_size": batch_size, **summarize(x)}
            row["speedup_vs_torch"] = round(torch_p50 / row["p50_ms"], 3)
            if name != TORCH:
                row.update(compare(TORCH, blocks[TORCH], blocks[name]))
            results.append(row)
    return {"run": str(cfg.run), "tokens": cfg.tokens, "threads": threads,
            "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__}, "results": results}, samples


SERVED_MODES = {"batch 1": (1, None), "batch 16, padded to the longest": (16, None),
                "batch 16, length buckets": (16, "buckets")}
"""Row label -> (batch size, padding): None pads the batch to its longest text (``max_padding=None``),
"buckets" runs it in length buckets (the served default)."""


def _version_folder(onnx_dir: Path, onnx_file: str, folder: Path) -> Path:
    """A folder laid out like a published version (links, nothing copied) for ``TextClassifier``."""
    folder.mkdir(parents=True)
    max_length = json.loads((onnx_dir / names.TRAINING_CONFIG_FILE).read_text())["max_length"]
    (folder / SETTINGS_FILE).write_text(json.dumps({"max_length": max_length, "onnx_file": onnx_file}))
    for name in (*TOKENIZER_FILES, CONTRACT.label_map_file, onnx_file):
        if (onnx_dir / name).is_file():
            (folder / name).symlink_to((onnx_dir / name).resolve())
    return folder


def served_path(cfg: ExportBenchConfig, threads: int) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Per-item milliseconds of ``TextClassifier.predict`` at batch 1 and 16 on real held-out reviews (in their
    file order, so lengths are mixed), for each variant and padding mode, the modes alternating in phases;
    (the figures, per-item milliseconds by variant and mode)."""
    layout = RunLayout(cfg.run)
    texts = [ex.text for ex in read_jsonl(layout.heldout)][:cfg.texts]
    files = {f"{v}": f for v, f in VARIANT_FILES.items() if (layout.onnx / f).is_file()}
    if (layout.onnx / UNFUSED_FILE).is_file():
        files = {"fp32 unfused": UNFUSED_FILE, **files}
    arms, shapes = {}, {}
    warmup = max(1, cfg.warmup // 4)
    with tempfile.TemporaryDirectory(prefix="tunestack-bench-") as tmp:
        for variant, file in files.items():
            folder = _version_folder(layout.onnx, file, Path(tmp) / variant.replace(" ", "-"))
            models = {None: TextClassifier(folder, threads, max_padding=None), "buckets": TextClassifier(folder, threads)}
            for mode, (batch_size, padding) in SERVED_MODES.items():
                batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
                chunks = split(batches, cfg.phases)
                arms[(variant, mode)] = (models[padding], batches, chunks)
                shapes[(variant, mode)] = (batch_size, len(batches))
        blocks = run_phases({key: (lambda k, m=m, c=c: time_each(m.predict, c[k], per_item=len))
                             for key, (m, _, c) in arms.items()}, cfg.phases,
                            warmup=lambda key: [arms[key][0].predict(b) for b in arms[key][1][:warmup]])
    rows, samples = [], {}
    for (variant, mode), b in blocks.items():
        x = np.concatenate(b)
        samples.setdefault(f"per_item_cdf_{variant.replace(' ', '_')}", {})[mode] = x
        row = {"variant": variant, "mode": mode, "batch_size": shapes[(variant, mode)][0],
               "batches": shapes[(variant, mode)][1], **summarize(x)}
        rows.append({**row, "items_per_s": round(1000 / row["mean_ms"], 1)})
    for row in rows:
        single = next(r for r in rows if r["variant"] == row["variant"] and r["batch_size"] == 1)
        row["per_item_vs_batch1"] = round(row["mean_ms"] / single["mean_ms"], 3)
    return {"run": str(cfg.run), "threads": threads, "texts": len(texts), "unit": "milliseconds per item",
            "onnxruntime": ort.__version__, "results": rows}, samples


def format_served_table(report: dict) -> str:
    return (f"per-item time of the served model code, {report['texts']} real held-out reviews, "
            f"{report['threads']} ORT thread(s):\n\n" + markdown_table(
                ["variant", "batch", "per-item p50 ms", "per-item mean ms", "items/s", "per item vs batch 1"],
                [(r["variant"], r["mode"], f"{r['p50_ms']:.3f}", f"{r['mean_ms']:.3f}", f"{r['items_per_s']:.0f}",
                  f"{r['per_item_vs_batch1']:.2f}x") for r in report["results"]], "llrrrr"))


def format_table(report: dict) -> str:
    return markdown_table(["backend", "batch", "p50 ms", "p99 ms", "speed-up vs torch (p50)", "p50 vs torch ms (95% CI)"],
                          [(r["backend"], r["batch_size"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                            f"{r['speedup_vs_torch']:.2f}x", format_diff(r["diff_p50_ms"]) if "diff_p50_ms" in r else "-")
                           for r in report["results"]], "lrrrrr")


@dataclass
class ExportBenchConfig(BenchOutput):
    """torch eager vs ONNX Runtime fp32 vs int8 at fixed length, or (``--served-path``) the served model code."""

    run: Path = Path("runs/demo")
    """Run folder with merged/ and onnx/."""
    tokens: int = 64
    """Tokens per sequence."""
    iterations: int = 200
    """Timed iterations per backend and batch size."""
    warmup: int = 20
    """Untimed warm-up iterations per backend (with --served-path, a quarter of it per variant and mode)."""
    phases: int = 4
    """Alternating phases the iterations (or --served-path's batches) are split into (>= 2: the intervals are
    across phases)."""
    threads: int | None = None
    """Intra-op threads for torch and ONNX Runtime (default: 2; with --served-path, the intra-op threads
    `make export` publishes for this machine's core count)."""
    batch_sizes: tuple[int, ...] = (1, 16)
    """Comma-separated batch sizes."""
    served_path: bool = False
    """Bench the served model code instead: batch 1 vs 16 per item, padded vs length buckets, every variant."""
    texts: int = 512
    """--served-path: held-out reviews to run."""

    def __post_init__(self) -> None:
        problems = []
        if self.phases < 2 or self.iterations < self.phases:
            problems.append(f"phases must be >= 2 and iterations >= phases, got {self.phases} and {self.iterations}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or max(self.batch_sizes) > 256 or self.tokens < 3:
            problems.append(f"batch sizes must lie in 1..256 and tokens be >= 3, got {self.batch_sizes} and {self.tokens}")
        raise_problems(problems, ValueError, "export bench config")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(ExportBenchConfig, argv, "python -m export.bench", __doc__.split("\n\n")[0])
    if cfg.served_path:
        threads = cfg.threads or serving_defaults(os.cpu_count() or 1)["intra_op_threads"]
        bench_run = BenchRun("export-served", "The served model code: per-item time by batch and padding", cfg)
        figures, samples = served_path(cfg, threads)
        report = bench_run.write(figures, format_served_table, samples)
        print(format_served_table(report.data))
    else:
        bench_run = BenchRun("export", "torch eager vs ONNX Runtime fp32 vs int8", cfg)
        figures, samples = run(cfg, cfg.threads or 2)
        report = bench_run.write(figures, format_table, samples)
        print(format_table(report.data))
    print(f"\nwritten: {report.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
