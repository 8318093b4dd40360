"""``python -m training compare``: every method on the same split, seed and budget, exported and timed.

For each method: train (``--time-budget-s`` each, same data/seed/batch), export through the parity
gate (no publish to the project's repository), publish its int8 (fp32 if int8 failed the gate) as a model
named after the method into a temporary repository, and time it in-process with ONNX Runtime. When every
method is done, one real tritonserver serves them all and each is timed through it (``compare_served``:
batch 1, the held-out texts, ``latency_requests`` requests each, round-robin): ``served_p50_ms`` is that
figure, ``inprocess_p50_ms`` the in-process one. The peak resident
memory is sampled while the method trains (it includes what the process held before, so read it as
an upper bound). Output: ``reports/compare-TIMESTAMP/`` with compare.json, compare.md and compare.png.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from training.compare_report import headline, render_markdown, write_plot
from training.compare_served import publish_for_serving, served_latencies
from training.config import TrainConfig
from training.data import read_jsonl
from training.errors import ConfigError
from training.methods import METHODS, check_method
from training.train import train
from tunestack import names, tracking
from tunestack.configfile import config_to_dict

log = logging.getLogger(__name__)

SERVED_LATENCY = ("through a real tritonserver: each method's variant published as the project publishes it (python "
                  "backend, this machine's default settings), tritonclient.http, batch 1, held-out texts, round-robin "
                  "over the methods; P50 and P99 of the client-side round trip")
INPROCESS_LATENCY = "tokenizer + ONNX Runtime session inside the compare process, batch 1, held-out texts, P50"


@dataclass
class CompareConfig:
    """Train, export and time several fine-tuning methods on one split. Output: ``reports/compare-TIMESTAMP/``."""

    methods: tuple[str, ...] = ("full", "freeze", "lora", "ia3", "loha")
    """Methods to compare, in order (see ``python -m training --help`` for each)."""
    time_budget_s: float = 150.0
    """Training wall-clock budget per method, in seconds."""
    model: Path | None = None
    """Local Hugging Face model folder; None: the bundled all-MiniLM-L6-v2."""
    data: Path | None = None
    """CSV/JSONL with text and label columns; None: the bundled Rotten Tomatoes reviews."""
    max_examples: int | None = None
    """Use a stratified sample of at most this many examples (None: all)."""
    max_steps: int | None = None
    """Stop each method after this many optimizer steps (None: from epochs, within the budget)."""
    epochs: float = 1.0
    """Passes over the training split per method (the time budget usually ends training first)."""
    batch_size: int = 16
    """Training batch size (the same for every method)."""
    max_length: int = 64
    """Tokens per example."""
    eval_every: int = 50
    """Validation every N steps (the best checkpoint and time-to-best come from these)."""
    freeze_layers: int = 3
    """freeze: embeddings + this many bottom blocks stay frozen."""
    seed: int = 42
    """Seed for the split, initialisation and shuffling (the same for every method)."""
    threads: int | None = None
    """torch and ONNX Runtime intra-op threads (None: their defaults)."""
    train_config: Path | None = None
    """Optional YAML/TOML/JSON file of further TrainConfig keys applied to every method (e.g. lr_schedule)."""
    variants: tuple[str, ...] = ("fp32", "int8")
    """ONNX variants to export and gate for each method."""
    latency_requests: int = 200
    """Batch-1 requests timed per method through tritonserver, and ONNX Runtime calls in process (P50s reported)."""
    served: bool = True
    """Time each method through a real tritonserver (False: in process only, served_p50_ms is null)."""
    runs_dir: Path = Path("runs")
    """Where each method's run goes (runs_dir/compare-TIMESTAMP-METHOD/)."""
    reports_dir: Path = Path("reports")
    """Where the report folder goes."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes copied into compare.json."""

    def __post_init__(self) -> None:
        for name in ("model", "data", "train_config", "runs_dir", "reports_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        self.methods, self.variants = tuple(self.methods), tuple(self.variants)
        problems = [p for m in self.methods for p in check_method(m)]
        if not self.methods:
            problems.append(f"methods is empty; expected some of: {', '.join(METHODS)}")
        if self.time_budget_s <= 0:
            problems.append(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if self.latency_requests < 1:
            problems.append(f"latency_requests must be >= 1, got {self.latency_requests}")
        if problems:
            raise ConfigError("invalid compare config:\n  - " + "\n  - ".join(problems))

    def train_config_for(self, method: str, name: str) -> TrainConfig:
        """The TrainConfig of one method: the shared keys, the file's keys, then the method."""
        from tunestack.configfile import load_config_file

        extra = load_config_file(self.train_config, normalize_keys=True) if self.train_config else {}
        shared = {k: getattr(self, k) for k in ("model", "data", "max_examples", "max_steps", "epochs", "batch_size",
                                                "max_length", "eval_every", "freeze_layers", "seed", "threads",
                                                "time_budget_s", "runs_dir")}
        return TrainConfig.from_dict(shared | extra | {"method": method, "name": name})


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak_mb`` is the largest sample."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s, self.peak = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def inprocess_p50_ms(onnx_file: Path, heldout: Path, max_length: int, requests: int, threads: int | None) -> float:
    """P50 latency (ms) of batch-1 ONNX Runtime calls on the held-out texts, tokenization included."""
    from transformers import AutoTokenizer

    from export.parity import onnx_session
    from training.metrics import encode

    session = onnx_session(onnx_file, threads or 0)
    tokenizer = AutoTokenizer.from_pretrained(onnx_file.parent)
    names = {i.name for i in session.get_inputs()}
    texts = [ex.text for ex in read_jsonl(heldout)]
    timings = []
    for i in range(requests + 5):
        started = time.perf_counter()
        enc = encode(tokenizer, [texts[i % len(texts)]], max_length)
        session.run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})
        if i >= 5:  # the first calls warm the session up
            timings.append(1000 * (time.perf_counter() - started))
    return round(float(np.median(timings)), 3)


def compare_one(cfg: CompareConfig, method: str, name: str, served_repo: Path | None) -> dict:
    """Train, export and time one method in process; its row of the table. With ``served_repo``, the timed
    variant is also published there as model ``method`` (for ``compare_served``)."""
    from export.config import ExportConfig
    from export.pipeline import run_export

    tcfg = cfg.train_config_for(method, name)
    gc.collect()
    with PeakRss() as rss:
        result = train(tcfg)
    export = run_export(ExportConfig(adapter=result.adapter_dir, runs_dir=cfg.runs_dir, publish=False, variants=cfg.variants))
    variants = export.parity["variants"]
    timed = "int8" if variants.get("int8", {}).get("publishable") else "fp32"
    m, after = result.metrics, result.metrics["test_after"]
    test_labels = Counter(ex.label for ex in read_jsonl(result.adapter_dir / names.HELDOUT_FILE))
    if served_repo is not None and variants[timed]["publishable"]:
        publish_for_serving(export.onnx_dir, timed, served_repo, method)
    return {
        "method": method, "accuracy": after["accuracy"], "macro_f1": after["macro_f1"], "auc": after["auc"],
        "trainable_params": m["trainable_parameters"], "total_params": m["total_parameters"],
        "train_seconds": m["train_seconds"], "steps": m["steps"], "seconds_per_step": m["seconds_per_step"],
        "seconds_to_best": m["seconds_to_best"], "stop_reason": m["stop_reason"], "learning_rate": m["learning_rate"],
        "peak_rss_mb": rss.peak_mb,
        "majority_accuracy": max(test_labels.values()) / sum(test_labels.values()),
        "export_parity": "pass" if export.passed else "fail",
        "parity": {v: {"max_abs_diff": e["max_abs_diff"], "label_agreement": e["label_agreement"],
                       "accuracy": e["accuracy"], "publishable": e["publishable"]} for v, e in variants.items()},
        "served_variant": timed, "served_p50_ms": None, "served_p99_ms": None,
        "inprocess_p50_ms": inprocess_p50_ms(export.onnx_dir / variants[timed]["file"], export.onnx_dir / names.HELDOUT_FILE,
                                       tcfg.max_length, cfg.latency_requests, cfg.threads),
        "adapter_dir": str(result.adapter_dir), "training_run_id": result.run_id,
    }


def run_compare(cfg: CompareConfig) -> Path:
    """Compare every method of ``cfg``; returns the report folder."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = cfg.reports_dir / f"compare-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="compare-served-") as tmp:
        served_repo = Path(tmp) / "model_repository" if cfg.served else None
        for i, method in enumerate(cfg.methods, 1):
            log.info("compare %d/%d: %s (budget %.0f s)", i, len(cfg.methods), method, cfg.time_budget_s)
            rows.append(compare_one(cfg, method, f"compare-{stamp}-{method}", served_repo))
        if served_repo is not None:
            texts = [ex.text for ex in read_jsonl(Path(rows[0]["adapter_dir"]) / names.HELDOUT_FILE)]
            log.info("timing %d methods through tritonserver (%d requests each)", len(rows), cfg.latency_requests)
            gated = [r["method"] for r in rows if r["parity"][r["served_variant"]]["publishable"]]
            served = served_latencies(served_repo, gated, texts, cfg.latency_requests,
                                      log_file=folder / "tritonserver.log") if gated else {}
            for row in (r for r in rows if r["method"] in served):
                row["served_p50_ms"], row["served_p99_ms"] = (served[row["method"]][k] for k in ("p50_ms", "p99_ms"))
    report = {"created": stamp, "config": config_to_dict(cfg), "rows": rows, "headline": headline(rows),
              "served_latency": SERVED_LATENCY if cfg.served else "not measured (served: false)",
              "inprocess_latency": INPROCESS_LATENCY}
    (folder / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    write_plot(rows, folder / "compare.png")
    (folder / "compare.md").write_text(render_markdown(report, "compare.png"))
    tracking.log_run("compare", folder.name, params=report["config"], metrics=report["headline"] or {},
                     documents={"compare.json": report})
    log.info("comparison written to %s", folder)
    return folder
