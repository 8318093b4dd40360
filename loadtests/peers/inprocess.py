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
from tunestack.bench import run_phases, summarize, time_each

log = logging.getLogger(__name__)

PHASES = 5
"""Phases the rows alternate in."""
WARMUP = 10
"""Untimed calls per row before the first phase."""


def _phase(predict, batches: list[list[str]], seconds: float) -> tuple[np.ndarray, float]:
    """Call ``predict`` on consecutive batches for ``seconds``; (milliseconds per call, seconds elapsed)."""
    times, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        times.append(time_each(predict, [batches[i % len(batches)]])[0])
        i += 1
    return np.asarray(times), time.perf_counter() - start


def inprocess_limit(version_dir: Path, texts: list[str], threads: int, seconds: float, phases: int = PHASES) -> dict:
    """Rows for batch 1 and 16 with the peers' code, batch 16 with the served ``model.py`` (alternating in
    ``phases`` phases, ``seconds`` per row in all; figures per call in the bench harness's schema); and the
    best items/s."""
    from export.triton_model.model import TextClassifier

    model = OrtModel.load(version_dir, threads)
    served = TextClassifier(version_dir, intra_op_threads=threads)
    codes = {("tokenizers + ORT", 1): model.predict, ("tokenizers + ORT", 16): model.predict,
             ("model.py TextClassifier", 16): served.predict}
    batches = {batch: [texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)] for _, batch in codes}
    log.info("in process: %s, %d threads, %.0f s each in %d phases", ", ".join(f"{c} batch {b}" for c, b in codes),
             threads, seconds, phases)
    blocks = run_phases({key: (lambda _, key=key: _phase(codes[key], batches[key[1]], seconds / phases))
                         for key in codes}, phases,
                        warmup=lambda key: [codes[key](batches[key[1]][i % len(batches[key[1]])]) for i in range(WARMUP)])
    rows = []
    for (name, batch), got in blocks.items():
        times = np.concatenate([t for t, _ in got])
        rows.append({"code": name, "threads": threads, "batch_size": batch, **summarize(times),
                     "items_per_s": len(times) * batch / sum(elapsed for _, elapsed in got)})
    best = max(rows, key=lambda r: r["items_per_s"])
    return {"rows": rows, "best_items_per_s": best["items_per_s"], "best": f"{best['code']}, batch {best['batch_size']}"}
