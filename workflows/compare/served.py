"""Served latency for ``python -m workflows compare``: every method's model through one real tritonserver.

Each method's gated variant is published (``export.publish``, exactly as ``make export`` would) as its own
model, named after the method, into a temporary model repository. One ``tritonserver`` then loads them all
and a ``tritonclient.http`` client sends batch-1 requests of held-out texts, one method after another in
each round (round-robin), so a slow moment of the machine lands on every method alike. Per method:
exact P50 and P99 of the client-side round trip (request encoding, HTTP, Triton's batcher, the python
model's tokenization and ONNX Runtime, the answer).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WARMUP_REQUESTS = 5
"""Requests per model before timing starts (the first calls load ONNX Runtime's kernels)."""


def publish_for_serving(onnx_dir: Path, variant: str, repository: Path, model_name: str) -> Path:
    """Publish ``variant`` of ``onnx_dir`` as model ``model_name`` in ``repository`` (the project's default
    serving settings for this machine); the version folder."""
    from export.config import ExportConfig
    from export.publish import publish

    return publish(onnx_dir, variant, ExportConfig(repository=repository, model_name=model_name))


def served_latencies(repository: Path, models: list[str], texts: list[str], requests: int,
                     log_file: Path | None = None) -> dict[str, dict[str, float]]:
    """Start tritonserver on ``repository`` with ``models``, time ``requests`` batch-1 requests per model
    (round-robin over the models), stop it; ``{model: {"p50_ms", "p99_ms", "requests"}}``."""
    from serving.client import TritonClassifier
    from serving.triton import TritonServer

    if not texts:
        raise ValueError("no texts to time the served models with")
    timings: dict[str, list[float]] = {m: [] for m in models}
    with TritonServer(repository, models=models, log_file=log_file) as triton:
        clients = {m: TritonClassifier(triton.http_address, model=m) for m in models}
        try:
            for i in range(WARMUP_REQUESTS + requests):
                text = texts[i % len(texts)]
                for model, client in clients.items():
                    started = time.perf_counter()
                    client.infer([text])
                    if i >= WARMUP_REQUESTS:
                        timings[model].append(1000 * (time.perf_counter() - started))
        finally:
            for client in clients.values():
                client.close()
    log.info("timed %d served models through tritonserver, %d requests each", len(models), requests)
    return {m: {"p50_ms": round(float(np.percentile(t, 50)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
                "requests": len(t)} for m, t in timings.items()}
