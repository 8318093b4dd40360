"""Start an HTTP service the benchmark talks to (the baseline) and always stop it.

    with Service.baseline("runs/demo/merged") as baseline:     # waits for /v2/health/ready
        ...                                                     # SIGTERM, then SIGKILL of its process group

Triton is started with ``serving.triton.TritonServer``, the router with ``serving.router.process.RouterProcess``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.config import LoadTestError
from serving.processes import http_ok, log_tail, stop_process_group
from serving.triton import free_port

log = logging.getLogger(__name__)


class Service:
    """One subprocess serving HTTP on 127.0.0.1:``port``, ready when ``ready_path`` answers 200."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str = "/v2/health/ready",
                 startup_timeout: float = 120.0, log_path: Path | None = None):
        self.name, self.argv, self.port, self.ready_path = name, argv, port, ready_path
        self.startup_timeout = startup_timeout
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @classmethod
    def baseline(cls, model_dir: Path, port: int = 0, threads: int = 2, **kwargs) -> Service:
        port = port or free_port()
        argv = [sys.executable, "-m", "loadtests", "baseline", "--model", str(model_dir), "--port", str(port),
                "--threads", str(threads)]
        return cls("baseline", argv, port, **kwargs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Service:
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=dict(os.environ))
        deadline = time.monotonic() + self.startup_timeout
        try:
            while not self._ready():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    state = (f"exited with code {self.process.returncode}" if self.process.poll() is not None
                             else f"not ready after {self.startup_timeout:.0f} s")
                    raise LoadTestError(f"{self.name} {state}; log {self.log_path}:\n{self.log_tail()}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        log.info("%s ready on %s", self.name, self.url)
        return self

    def _ready(self) -> bool:
        return http_ok(self.url + self.ready_path)

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process, timeout, self.name)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
