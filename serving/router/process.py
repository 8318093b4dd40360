"""Run ``python -m serving router`` as a child process: for the benchmark, the load tests and the e2e tests.

    with RouterProcess("serving/experiments/sentiment-ab.yaml", triton_url=server.http_url) as router:
        client = tritonclient.http.InferenceServerClient(router.address)

The router gets its own process group, listens on 127.0.0.1 on a free port unless told otherwise, and
``stop()`` sends SIGTERM (in-flight requests finish), then kills the group if it lingers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from serving.processes import http_ok, log_tail, stop_process_group
from serving.router.state import TOKEN_ENV
from serving.triton import free_port

ROOT = Path(__file__).resolve().parents[2]


class RouterProcess:
    """One router child process. ``extra_args`` are more ``python -m serving router`` flags."""

    def __init__(self, experiment: str | Path, *, port: int = 0, triton_url: str | None = None,
                 admin_token_file: str | Path | None = None, log_file: str | Path | None = None,
                 extra_args: Sequence[str] = (), startup_timeout: float = 30.0):
        self.experiment = Path(experiment)
        self.port = port or free_port()
        self.log_path = Path(log_file) if log_file else Path(tempfile.mkstemp(prefix="router-", suffix=".log")[1])
        self.args = ["--experiment", str(self.experiment), "--port", str(self.port), *extra_args]
        if triton_url:
            self.args += ["--triton-url", triton_url]
        if admin_token_file:
            self.args += ["--admin-token-file", str(admin_token_file)]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` for ``tritonclient.http.InferenceServerClient``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> RouterProcess:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # the token comes from the file only
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "serving", "router", *self.args], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"router exited with code {code}; log {self.log_path}:\n{self.log_tail()}")
            if http_ok(self.url + "/v2/health/live", timeout=1):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"router not live after {self.startup_timeout:.0f} s; log:\n{self.log_tail()}")
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        assert self.process is not None, "router is not running"
        self.process.send_signal(sig)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        return stop_process_group(process, timeout, "router")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> RouterProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
