"""Start an HTTP service the benchmark talks to (the baseline) and always stop it.

    with Service.baseline("runs/demo/merged") as baseline:     # waits for /v2/health/ready
        ...                                                     # SIGTERM, then SIGKILL of its process group

Triton is started with ``serving.triton.TritonServer``, the router with ``serving.router.process.RouterProcess``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from loadtests.config import LoadTestError
from tunestack.names import HOST
from tunestack.procs import ChildProcess, StartError, free_port, http_ok, log_tail

log = logging.getLogger(__name__)


class Service:
    """One subprocess serving HTTP on 127.0.0.1:``port``, ready when ``ready_path`` answers 200.

    Started, waited on and stopped by ``tunestack.procs.ChildProcess`` (its own process group).
    """

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str = "/v2/health/ready",
                 startup_timeout: float = 120.0, log_path: Path | None = None):
        self.name, self.argv, self.port, self.ready_path = name, argv, port, ready_path
        self.startup_timeout = startup_timeout
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.child: ChildProcess | None = None

    @classmethod
    def baseline(cls, model_dir: Path, port: int = 0, threads: int = 2, **kwargs) -> Service:
        port = port or free_port()
        argv = [sys.executable, "-m", "loadtests", "baseline", "--model", str(model_dir), "--port", str(port),
                "--threads", str(threads)]
        return cls("baseline", argv, port, **kwargs)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Service:
        """Start it in its own process group and wait until ``ready_path`` answers 200."""
        self.child = ChildProcess(self.name, self.argv, self.log_path).start()
        try:
            self.child.wait_until(lambda: http_ok(self.url + self.ready_path), self.startup_timeout, interval=0.2)
        except StartError as e:
            self.stop()
            raise LoadTestError(str(e)) from None
        except BaseException:
            self.stop()
            raise
        log.info("%s ready on %s", self.name, self.url)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.stop(timeout)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
