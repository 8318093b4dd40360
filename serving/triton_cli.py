"""``python -m serving triton ...`` (run Triton) and ``python -m serving models ...`` (manage versions).

    python -m serving triton --repository model_repository --model sentiment
    python -m serving models list
    python -m serving models rollback sentiment 1
    python -m serving models load sentiment            # back to config.pbtxt's version policy
    python -m serving models unload sentiment
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from typing import Literal

from serving.errors import ServingError
from serving.repository import ModelRepository
from serving.triton import TritonServer
from tunestack import names
from tunestack.cli import option, parse_dataclass

DEFAULT_REPOSITORY = "model_repository"


@dataclass
class TritonArgs:
    """Start the Triton Inference Server from the pinned nvidia-pytriton wheel on 127.0.0.1 with explicit model
    control, wait until the models are ready, and serve until Ctrl-C / SIGTERM."""

    repository: str = DEFAULT_REPOSITORY
    """Model repository: a folder, or s3://BUCKET/PREFIX (AWS_* credentials and endpoint from the environment)."""
    models: tuple[str, ...] | None = option(None, flag="--model", repeat=True)
    """Model to load at start-up (NAME); default: every model in the repository."""
    tritonserver: str | None = None
    """A tritonserver binary (PATH) to use instead of nvidia-pytriton's."""
    http_port: int = names.TRITON_HTTP_PORT
    """HTTP port (0: a free one)."""
    grpc_port: int = names.TRITON_GRPC_PORT
    """gRPC port (0: a free one)."""
    metrics_port: int = names.TRITON_METRICS_PORT
    """Prometheus metrics port (0: a free one)."""
    timeout: float = 120.0
    """Seconds to wait until the models are ready."""
    log_file: str | None = None
    """tritonserver's log (default: a temporary file, printed at start)."""
    log_verbose: int = 0
    """tritonserver --log-verbose level."""


@dataclass
class ModelsArgs:
    """List, load, unload and roll back model versions on a running Triton (repository API)."""

    action: Literal["list", "load", "unload", "rollback"] = option(positional=True)
    """list: models and versions with their state; load MODEL: its config.pbtxt policy, or exactly --version N
    ...; unload MODEL: every version; rollback MODEL VERSION: serve only VERSION (`load MODEL` undoes it)."""
    model: str | None = option(None, positional=True)
    """The model (load, unload, rollback)."""
    version: int | None = option(None, positional=True)
    """rollback: the (earlier) version to serve."""
    versions: tuple[int, ...] = option((), flag="--version", repeat=True)
    """load: serve exactly these versions (N)."""
    url: str = names.TRITON_HTTP_ADDRESS
    """Triton's HTTP address host:port."""
    repository: str = DEFAULT_REPOSITORY
    """The repository folder Triton serves (read to roll back / pin versions)."""
    timeout: float = 120.0
    """Seconds to wait for a load or unload."""

    def __post_init__(self) -> None:
        if self.action != "list" and not self.model:
            raise ValueError(f"{self.action} needs a MODEL: python -m serving models {self.action} MODEL")
        if self.action == "rollback" and self.version is None:
            raise ValueError("rollback needs a VERSION: python -m serving models rollback MODEL VERSION")


def run_triton(argv: list[str]) -> int:
    """``python -m serving triton [options]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_dataclass(TritonArgs, argv, prog="python -m serving triton")
    repository = args.repository
    if repository.startswith("s3://"):  # tritonserver reads the bucket itself (endpoint from AWS_ENDPOINT_URL)
        from export.object_store import S3Repository

        repository = S3Repository.from_env(repository).triton_uri
    server = TritonServer(repository, models=args.models, tritonserver=args.tritonserver,
                          http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                          log_file=args.log_file, log_verbose=args.log_verbose, startup_timeout=args.timeout)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.start()
        print(f"Triton ready: http {server.http_url}  grpc {server.grpc_url}  metrics {server.metrics_url}")
        print(f"log: {server.log_path}   (Ctrl-C to stop)", flush=True)
        code = server.process.wait()
        print(f"tritonserver exited with code {code}; log tail:\n{server.log_tail()}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("stopping tritonserver ...", flush=True)
        return 0
    except ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def run_models(argv: list[str]) -> int:
    """``python -m serving models [options] list|load|unload|rollback ...``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_dataclass(ModelsArgs, argv, prog="python -m serving models")
    try:
        with ModelRepository(args.url, args.repository, timeout=args.timeout) as repo:
            if args.action == "load":
                repo.load(args.model, args.versions or None)
            elif args.action == "unload":
                repo.unload(args.model)
            elif args.action == "rollback":
                repo.rollback(args.model, args.version)
            rows = repo.list()
    except ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - connection refused and the like: one line, not a traceback
        print(f"error: cannot reach Triton at {args.url}: {e}", file=sys.stderr)
        return 1
    print(f"{'MODEL':<24} {'VERSION':>7}  {'STATE':<12} REASON")
    for row in rows:
        print(f"{row.name:<24} {row.version or '-':>7}  {row.state or '-':<12} {row.reason}")
    return 0
