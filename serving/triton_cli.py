"""``python -m serving triton ...`` (run Triton) and ``python -m serving models ...`` (manage versions).

    python -m serving triton --repository model_repository --model sentiment
    python -m serving models list
    python -m serving models rollback sentiment 1
    python -m serving models load sentiment            # back to config.pbtxt's version policy
    python -m serving models unload sentiment
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from serving.errors import ServingError
from serving.repository import ModelRepository
from serving.triton import TritonServer
from tunestack import names

DEFAULT_REPOSITORY = "model_repository"


def triton_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving triton", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Start the Triton Inference Server from the pinned nvidia-pytriton wheel on 127.0.0.1 with "
                    "explicit model control, wait until the models are ready, and serve until Ctrl-C / SIGTERM.")
    p.add_argument("--repository", default=DEFAULT_REPOSITORY,
                   help="model repository: a folder, or s3://BUCKET/PREFIX (AWS_* credentials and endpoint from the environment)")
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="model to load at start-up (repeatable); default: every model in the repository")
    p.add_argument("--tritonserver", metavar="PATH", help="a tritonserver binary to use instead of nvidia-pytriton's")
    p.add_argument("--http-port", type=int, default=names.TRITON_HTTP_PORT, help="HTTP port (0: a free one)")
    p.add_argument("--grpc-port", type=int, default=names.TRITON_GRPC_PORT, help="gRPC port (0: a free one)")
    p.add_argument("--metrics-port", type=int, default=names.TRITON_METRICS_PORT,
                   help="Prometheus metrics port (0: a free one)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until the models are ready")
    p.add_argument("--log-file", help="tritonserver's log (default: a temporary file, printed at start)")
    p.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    return p


def models_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving models", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="List, load, unload and roll back model versions on a running Triton (repository API).")
    p.add_argument("--url", default=names.TRITON_HTTP_ADDRESS, help="Triton's HTTP address host:port")
    p.add_argument("--repository", default=DEFAULT_REPOSITORY,
                   help="the repository folder Triton serves (read to roll back / pin versions)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a load or unload")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="models and versions with their state")
    load = sub.add_parser("load", help="load a model: its config.pbtxt policy, or exactly --version N ...")
    load.add_argument("model")
    load.add_argument("--version", type=int, action="append", dest="versions", metavar="N",
                      help="serve exactly these versions (repeatable)")
    unload = sub.add_parser("unload", help="unload every version of a model")
    unload.add_argument("model")
    rollback = sub.add_parser("rollback", help="serve only VERSION (an earlier one); `load MODEL` undoes it")
    rollback.add_argument("model")
    rollback.add_argument("version", type=int)
    return p


def run_triton(args: argparse.Namespace) -> int:
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


def run_models(args: argparse.Namespace) -> int:
    try:
        with ModelRepository(args.url, args.repository, timeout=args.timeout) as repo:
            if args.action == "load":
                repo.load(args.model, args.versions)
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


def main(argv: Sequence[str]) -> int:
    """``argv[0]`` is the subcommand (``triton`` or ``models``), the rest its options."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, rest = argv[0], list(argv[1:])
    if command == "triton":
        return run_triton(triton_parser().parse_args(rest))
    if command == "models":
        return run_models(models_parser().parse_args(rest))
    raise SystemExit(f"unknown command {command!r}; expected triton or models")
