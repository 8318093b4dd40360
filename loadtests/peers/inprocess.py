"""The in-process limit: no server, no HTTP: ``tokenizers`` + ONNX Runtime on real reviews, in a loop.

What a served option is compared to (``make bench``'s ``served_vs_inprocess_best``): the items per second
one process gets from the same published version with the same threads, at batch 1 (the peers' code,
``OrtModel``) and at batch 16 (padded to the longest text; and the served ``model.py``'s own
``TextClassifier``, which does what Triton's instances do with a dynamic batch).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from loadtests.peers.common import OrtModel

log = logging.getLogger(__name__)


def _loop(predict, texts: list[str], batch: int, seconds: float, warmup: int = 10) -> dict:
    """Call ``predict`` on consecutive batches of ``texts`` for ``seconds``; items/s and per-call P50/P99."""
    batches = [texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    for i in range(warmup):
        predict(batches[i % len(batches)])
    times, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        predict(batches[i % len(batches)])
        times.append(time.perf_counter() - t)
        i += 1
    elapsed = time.perf_counter() - start
    ms = np.array(times) * 1000
    return {"batch_size": batch, "calls": len(times), "items_per_s": len(times) * batch / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def inprocess_limit(version_dir: Path, texts: list[str], threads: int, seconds: float) -> dict:
    """Rows for batch 1 and 16 with the peers' code, batch 16 with the served ``model.py``; and the best items/s."""
    from export.triton_model.model import TextClassifier

    model = OrtModel.load(version_dir, threads)
    served = TextClassifier(version_dir, intra_op_threads=threads)
    rows = []
    for name, predict, batch in (("tokenizers + ORT", model.predict, 1), ("tokenizers + ORT", model.predict, 16),
                                 ("model.py TextClassifier", served.predict, 16)):
        log.info("in process: %s, batch %d, %d threads, %.0f s", name, batch, threads, seconds)
        rows.append({"code": name, "threads": threads, **_loop(predict, texts, batch, seconds)})
    best = max(rows, key=lambda r: r["items_per_s"])
    return {"rows": rows, "best_items_per_s": best["items_per_s"], "best": f"{best['code']}, batch {best['batch_size']}"}
