"""Peer servers for ``make bench``: what a user would run instead of Triton, on the same ONNX model.

- ``fastapi_ort``: a ~30-line FastAPI + ONNX Runtime server, batch 1, 2 intra-op threads;
- ``litserve_ort``: LitServe (the real package) with its dynamic batching, on the same ORT model;
- ``common``: what both read from a published version folder (tokenizer, session, labels) and the KServe
  v2 JSON answer, so the same locustfile (``--target triton --model NAME``) measures them beside Triton.

Each runs as ``python -m workflows.peer_bench.peers.NAME --model-dir model_repository/sentiment/2 --port P`` and is
started and stopped like the other processes (``peer_service`` -> ``loadtests.services.Service``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from loadtests.services import Service
from tunestack.procs import free_port

PEERS = {"fastapi-ort": "workflows.peer_bench.peers.fastapi_ort", "litserve": "workflows.peer_bench.peers.litserve_ort"}
"""Peer name (also the model name in its URL, /v2/models/NAME/infer) -> its module."""


def peer_service(name: str, model_dir: Path, threads: int = 2, log_path: Path | None = None,
                 extra_args: tuple[str, ...] = ()) -> Service:
    """The peer ``name`` serving ``model_dir`` on a free port of 127.0.0.1, ready on /v2/health/ready."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of: {', '.join(PEERS)}")
    port = free_port()
    argv = [sys.executable, "-m", PEERS[name], "--model-dir", str(model_dir), "--port", str(port),
            "--threads", str(threads), *extra_args]
    return Service(name, argv, port, log_path=log_path)
