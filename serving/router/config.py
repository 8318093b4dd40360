"""The router process's settings (``RouterConfig``), validated up front; the experiment it runs is
``experiments.spec.Experiment``."""

from __future__ import annotations

from dataclasses import dataclass

from experiments.errors import ExperimentError
from experiments.spec_checks import store_url_problem
from tunestack import names

NO_STORE = "memory"
"""``--store memory``: no store; the experiment lives in the router's memory only (one process, lost on restart)."""


@dataclass(frozen=True)
class RouterConfig:
    """The router process's settings; ``python -m serving router`` mirrors these one to one."""

    experiment: str
    """Path of the experiment file (YAML or TOML); re-read on SIGHUP or POST .../reload."""
    host: str = names.HOST
    """Address to bind; loopback unless told otherwise."""
    port: int = names.ROUTER_PORT
    """Port to bind."""
    grpc_port: int = names.ROUTER_GRPC_PORT
    """Port of the KServe v2 gRPC endpoint (Triton's GRPCInferenceService), served alongside HTTP; 0 = none."""
    triton_url: str | None = None
    """Override of the experiment file's ``upstream`` (Triton HTTP base URL)."""
    triton_grpc_url: str | None = None
    """Override of the experiment file's ``grpc_upstream`` (Triton gRPC host:port)."""
    admin_token_file: str | None = None
    """File holding the admin bearer token (else env TUNESTACK_ROUTER_ADMIN_TOKEN; else admin API off)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted; larger bodies get 413."""
    max_connections: int = 64
    """Pooled keep-alive connections per Triton upstream."""
    max_shadow_in_flight: int = 32
    """Shadow copies in flight at most; beyond it copies are dropped (and counted), never queued."""
    request_log_size: int = 200_000
    """How many recent request ids are remembered for feedback."""
    latency_window: int = 50_000
    """How many recent latencies per arm the report's statistics use."""
    log_level: str = "info"
    """Logging level."""
    store: str | None = None
    """Experiment store URL: sqlite:///PATH (one router), postgresql://... (a fleet) or memory (none); else env
    TUNESTACK_ROUTER_STORE, else the experiment file's ``store``, else EXPERIMENT_FILE_STEM.store.sqlite beside
    the experiment file."""
    store_flush_interval_s: float = 0.2
    """How often the store's writer flushes answers; a kill -9 loses at most this long's answers plus one write."""
    store_buffer: int = 100_000
    """Records buffered for the store at most (while it is down); more are dropped and counted."""
    store_poll_s: float = 0.5
    """How often a replica checks the store for a new revision (PostgreSQL also wakes it with NOTIFY)."""
    feedback_pending_s: float = 600.0
    """With a store: feedback whose answer is not in the store yet is kept pending this long for it to arrive
    (from any replica's writer), then expired and counted (router_feedback_expired, the report)."""
    model_repository: str | None = None
    """Local model repository the arms' versions are published in: each arm's drift monitor compares live
    traffic with its version's ``drift_reference.json`` there (``serving.router.drift_feed``); None: no drift
    monitoring."""
    drift_sample_rate: float = 0.1
    """Fraction of answered requests whose texts feed the drift monitor, decoded and tokenized off the request
    path in a worker thread (1: every request)."""
    drift_window: int = 2000
    """Monitored texts kept per arm; the drift figures compare the newest ones with the reference."""
    look_interval_s: float = 5.0
    """How often, while traffic flows, the judge's verdicts are added to the history of looks the live page
    plots (the store's ``judge_looks``, or a ring in memory without a store); 0: no history."""
    look_ring: int = 720
    """Looks kept in memory without a store (720: an hour at 5 s); with a store every look is kept there."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port must be in 1..65535, got {self.port}")
        if not 0 <= self.grpc_port < 65536 or self.grpc_port == self.port:
            problems.append(f"grpc_port must be in 1..65535 (0: no gRPC endpoint) and differ from port {self.port}, "
                            f"got {self.grpc_port}")
        for name in ("max_body_bytes", "max_connections", "max_shadow_in_flight", "request_log_size", "latency_window",
                     "store_buffer"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.store not in (None, NO_STORE) and store_url_problem(self.store):
            problems.append(str(store_url_problem(self.store)))
        if not 0 <= self.drift_sample_rate <= 1:
            problems.append(f"drift_sample_rate must be in [0, 1], got {self.drift_sample_rate}")
        if self.drift_window < 50:
            problems.append(f"drift_window must be >= 50 (the monitor's minimum sample), got {self.drift_window}")
        for name in ("store_flush_interval_s", "store_poll_s"):
            if not 0 < getattr(self, name) <= 60:
                problems.append(f"{name} must be in (0, 60] seconds, got {getattr(self, name)}")
        if not (self.look_interval_s == 0 or 0.5 <= self.look_interval_s <= 3600):
            problems.append(f"look_interval_s must be 0 (no history of looks) or in [0.5, 3600] seconds, "
                            f"got {self.look_interval_s}")
        if self.look_ring < 2:
            problems.append(f"look_ring must be >= 2 (the first and the newest look), got {self.look_ring}")
        if not 1 <= self.feedback_pending_s <= 7 * 86400:
            problems.append(f"feedback_pending_s must be in [1, 604800] seconds (a week), got {self.feedback_pending_s}")
        if problems:
            raise ExperimentError(problems, "router config")
