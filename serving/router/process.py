"""Run ``python -m serving router`` as a child process: for the benchmark, the load tests and the e2e tests.

    with RouterProcess("experiments/specs/sentiment-ab.yaml", triton_url=server.http_url) as router:
        client = tritonclient.http.InferenceServerClient(router.address)
        grpc_client = tritonclient.grpc.InferenceServerClient(router.grpc_address)

The router gets its own process group, listens on 127.0.0.1 on free ports (HTTP and gRPC) unless told
otherwise, and ``stop()`` sends SIGTERM (in-flight requests finish), then kills the group if it lingers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from serving.admin_token import TOKEN_ENV
from tunestack.names import HOST
from tunestack.procs import ChildProcess, free_port, http_ok, log_tail

ROOT = Path(__file__).resolve().parents[2]


class RouterProcess:
    """One router child process. ``extra_args`` are more ``python -m serving router`` flags; ``root`` is the
    checkout it runs from (this one by default)."""

    def __init__(self, experiment: str | Path, *, port: int = 0, grpc_port: int = 0, triton_url: str | None = None,
                 triton_grpc_url: str | None = None, admin_token_file: str | Path | None = None, log_file: str | Path | None = None,
                 extra_args: Sequence[str] = (), startup_timeout: float = 30.0, root: str | Path = ROOT):
        self.experiment = Path(experiment)
        self.root = Path(root)
        """The checkout whose ``serving`` package runs (another one: a before/after benchmark)."""
        self.port = port or free_port()
        self.grpc_port = grpc_port or free_port()
        while self.grpc_port == self.port:
            self.grpc_port = free_port()
        self.log_path = Path(log_file) if log_file else Path(tempfile.mkstemp(prefix="router-", suffix=".log")[1])
        self.args = ["--experiment", str(self.experiment), "--port", str(self.port), "--grpc-port", str(self.grpc_port),
                     *extra_args]
        if triton_url:
            self.args += ["--triton-url", triton_url]
        if triton_grpc_url:
            self.args += ["--triton-grpc-url", triton_grpc_url]
        if admin_token_file:
            self.args += ["--admin-token-file", str(admin_token_file)]
        self.startup_timeout = startup_timeout
        self.child: ChildProcess | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` for ``tritonclient.http.InferenceServerClient``."""
        return f"{HOST}:{self.port}"

    @property
    def grpc_address(self) -> str:
        """``127.0.0.1:PORT`` for ``tritonclient.grpc.InferenceServerClient``."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def process(self) -> subprocess.Popen | None:
        """The running router's process (None when stopped)."""
        return self.child.process if self.child else None

    def start(self) -> RouterProcess:
        """Start the router and wait until ``/v2/health/live`` answers; ``StartError`` with its log otherwise."""
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # the token comes from the file only
        self.child = ChildProcess("router", [sys.executable, "-m", "serving", "router", *self.args], self.log_path,
                                  env=env, cwd=self.root).start()
        try:
            self.child.wait_until(lambda: http_ok(self.url + "/v2/health/live", timeout=1), self.startup_timeout,
                                  tail=self.log_tail)
        except BaseException:
            self.stop()
            raise
        return self

    def signal(self, sig: int) -> None:
        assert self.child is not None, "router is not running"
        self.child.send_signal(sig)

    def is_running(self) -> bool:
        return self.child is not None and self.child.is_running()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (in-flight requests finish), then SIGKILL of its process group after ``timeout`` s."""
        child, self.child = self.child, None
        return child.stop(timeout) if child else None

    def kill(self) -> int | None:
        """SIGKILL its whole process group at once (a crash, for drills and tests); the exit code."""
        child, self.child = self.child, None
        return child.kill() if child else None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> RouterProcess:
        return self.start() if self.child is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
