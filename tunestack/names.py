"""Literal names shared by more than one stage, each defined once; everything else derives from them.

Tensor and model names served by Triton live in ``export.contract`` (the serving contract); this module
holds the rest: where the servers listen by default, the router's upstream timeout, and the names of
files one stage writes and a later stage reads (where they lie in a run: ``tunestack.layout.RunLayout``).
"""

from __future__ import annotations

HOST = "127.0.0.1"
"""Every server the stack starts listens here (tests, drills, benches and the defaults of the CLIs)."""

TRITON_HTTP_PORT = 8000
"""Triton's default HTTP (KServe v2) port."""
TRITON_GRPC_PORT = 8001
"""Triton's default gRPC port."""
TRITON_METRICS_PORT = 8002
"""Triton's default Prometheus metrics port."""
ROUTER_PORT = 8080
"""The A/B router's default port."""
ROUTER_GRPC_PORT = 8081
"""The A/B router's default gRPC (KServe v2) port."""
PAGE_PORT = 8090
"""``python -m serving page``'s default port (the live experiment page read from a store)."""

TRITON_HTTP_ADDRESS = f"{HOST}:{TRITON_HTTP_PORT}"
"""``host:port`` of a default Triton's HTTP endpoint, as ``tritonclient.http`` takes it (no scheme)."""
TRITON_GRPC_ADDRESS = f"{HOST}:{TRITON_GRPC_PORT}"
"""``host:port`` of a default Triton's gRPC endpoint, as ``tritonclient.grpc`` takes it."""
TRITON_URL = f"http://{TRITON_HTTP_ADDRESS}"
"""Base URL of a default Triton's HTTP endpoint."""
TRITON_METRICS_URL = f"http://{HOST}:{TRITON_METRICS_PORT}/metrics"
"""A default Triton's Prometheus endpoint."""
ROUTER_URL = f"http://{HOST}:{ROUTER_PORT}"
"""Base URL of a default router."""

ROUTER_TIMEOUT_S = 2.0
"""Seconds the router waits for an upstream answer before it falls back or answers 504."""

# Files training writes next to the adapter (runs/NAME/adapter/); merge carries them forward.
LABEL_MAP_FILE = "label_map.json"
"""``{"labels": [...]}``: label id -> label name; read by export, the served model and the clients."""
TRAINING_CONFIG_FILE = "training_config.json"
"""The resolved training config (export reads ``max_length`` from it)."""
METRICS_FILE = "metrics.json"
"""Training's evaluation history and final test metrics."""
HELDOUT_FILE = "heldout.jsonl"
"""The held-out test split (text, label): parity data, benchmark and load-test texts."""
ADAPTER_CONFIG_FILE = "adapter_config.json"
"""peft's config of a saved adapter (absent when training saved a full model)."""

# Files export writes into runs/NAME/onnx/; publish copies some of them into each version.
PARITY_FILE = "parity.json"
"""The parity report written next to the ONNX files (and copied into each published version)."""
EXPORT_CONFIG_FILE = "export_config.json"
"""The resolved export config, next to the ONNX files."""
DRIFT_REFERENCE_FILE = "drift_reference.json"
"""Inside each published version: the drift monitor's training reference (``experiments.drift.monitor``); in
``runs/NAME/onnx/`` one per variant (``tunestack.layout.RunLayout.drift_reference``)."""
