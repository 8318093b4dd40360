"""The generation bench's peers: what a user would serve the fine-tuned causal LM with instead of Triton, each
an OpenAI-compatible server (``POST /v1/chat/completions``, ``stream: true``) on 127.0.0.1.

- ``transformers``: Hugging Face ``generate`` with ``TextIteratorStreamer`` behind FastAPI, on the merged fp32
  folder (``hf_engine``): the baseline;
- ``ortgenai-fp32`` / ``ortgenai-int8`` / ``ortgenai-int4``: onnxruntime-genai's generate loop on a model its
  builder made from the same merged folder at that precision (``ortgenai_build``, ``ortgenai_engine``).

The pieces: ``openai_api`` (the request the peers accept, the JSON and SSE they answer), ``engine`` (what an
engine does), ``app`` (the FastAPI app), ``PeerServer`` (one peer as a child process on a free port,
started, waited on and stopped like the stack's other processes). They are measured with
``serving.openai_stream``, the client any OpenAI-compatible arm uses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tunestack.names import HOST
from tunestack.procs import ChildProcess, free_port, http_ok

ENGINES = ("transformers", "ortgenai")
"""The engines ``python -m serving.llm_peers --engine`` runs."""
PEERS = {"transformers": ("transformers", None), "ortgenai-fp32": ("ortgenai", "fp32"),
         "ortgenai-int8": ("ortgenai", "int8"), "ortgenai-int4": ("ortgenai", "int4")}
"""Peer name -> (engine, onnxruntime-genai builder precision; None: the merged folder as it is)."""


class PeerServer:
    """One peer: ``python -m serving.llm_peers`` on 127.0.0.1 and a free port, ready when ``/health`` is 200.

    Args:
        name: the peer's name (logs, errors).
        engine: one of ``ENGINES``.
        model_dir: the folder the engine loads.
        model: the model name it serves.
        threads: intra-op threads of its engine.
        log_path: where its output goes.
        startup_timeout: seconds to load the model and listen.
    """

    def __init__(self, name: str, engine: str, model_dir: Path, model: str, threads: int,
                 log_path: Path | None = None, startup_timeout: float = 300.0):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
        self.port = free_port()
        self.startup_timeout = startup_timeout
        argv = [sys.executable, "-m", "serving.llm_peers", "--engine", engine, "--model-dir", str(model_dir),
                "--model", model, "--port", str(self.port), "--threads", str(threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.child = ChildProcess(name, argv, log_path, env=env)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> PeerServer:
        from serving.llm_peers.app import HEALTH_PATH

        self.child.start()
        try:
            self.child.wait_until(lambda: http_ok(self.url + HEALTH_PATH), self.startup_timeout, interval=0.2)
        except BaseException:
            self.child.stop()
            raise
        return self

    def stop(self) -> int | None:
        return self.child.stop()

    def __enter__(self) -> PeerServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
