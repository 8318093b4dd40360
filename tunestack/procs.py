"""Child processes the stack starts (tritonserver, the router, the baseline, Locust): one way to start
one in its own process group, wait until it is ready, and stop it without leaving anything behind.

    from tunestack.procs import ChildProcess, free_port, http_ok

    port = free_port()
    child = ChildProcess("router", [sys.executable, "-m", "serving", "router", "--port", str(port), ...])
    with child.start():                                   # own process group, output to a log file
        child.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/v2/health/live"), timeout=30)
        ...                                               # SIGTERM, grace, then SIGKILL of the group

Readiness is a condition polled until a deadline (never a sleep of a guessed length); a child that
exits first, or a deadline that passes, raises ``StartError`` with the tail of the child's log.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from tunestack.names import HOST

log = logging.getLogger(__name__)


class StartError(RuntimeError):
    """A child exited before it was ready, or was not ready by the deadline; the message ends with its log."""


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the child may still lose it to a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200 (a health endpoint); False on any error or other status."""
    try:
        return httpx.get(url, timeout=timeout, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not true after {timeout:.0f} s")
        time.sleep(interval)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def stop_process_groups(processes: Sequence[subprocess.Popen], timeout: float, name: str) -> list[int | None]:
    """SIGTERM every process (each started with ``start_new_session=True``), give them ``timeout`` s in all
    to finish their in-flight work, then SIGKILL each whole process group (children included); exit codes."""
    try:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) did not stop within %.0f s; killing its process group", name, process.pid,
                            timeout)
    finally:
        for process in processes:
            _kill_group(process)
    return [process.returncode for process in processes]


def stop_process_group(process: subprocess.Popen, timeout: float, name: str) -> int | None:
    """``stop_process_groups`` for one process: SIGTERM, ``timeout`` s of grace, SIGKILL of its group."""
    return stop_process_groups([process], timeout, name)[0]


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ChildProcess:
    """One command run in its own process group, its stdout and stderr appended to ``log_path``.

    Args:
        name: how logs and errors call it ("tritonserver", "router").
        argv: the command line.
        log_path: where its output goes; default a new temporary file.
        env: its environment; default this process's.
        cwd: its working folder; default this process's.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: str | Path | None = None, *,
                 env: Mapping[str, str] | None = None, cwd: str | Path | None = None):
        self.name, self.argv = name, list(argv)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ChildProcess:
        """Start it in a new session (its own process group); raises ``StartError`` if it already runs."""
        if self.is_running():
            raise StartError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, cwd=self.cwd, start_new_session=True)
        return self

    def wait_until(self, ready: Callable[[], bool], timeout: float, interval: float = 0.1,
                   tail: Callable[[], str] | None = None) -> None:
        """Poll ``ready`` until true; ``StartError`` with the log's tail (``tail()``, default the last lines)
        if the child exits first or ``timeout`` seconds pass. The child is left running either way."""
        tail = tail or self.log_tail
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise StartError(f"{self.name} exited with code {code} before it was ready; "
                                 f"log {self.log_path}:\n{tail()}")
            if ready():
                log.info("%s ready (pid %s)", self.name, self.process.pid)
                return
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} was not ready after {timeout:.0f} s; log {self.log_path}:\n{tail()}")
            time.sleep(interval)

    def send_signal(self, sig: int) -> None:
        assert self.process is not None, f"{self.name} is not running"
        self.process.send_signal(sig)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, up to ``grace`` seconds to finish, then SIGKILL of the group; the exit code (None: not started)."""
        process, self.process = self.process, None
        if process is None:
            return None
        return stop_process_group(process, grace, self.name)

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once (a crash, for drills and tests); the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        _kill_group(process)
        return process.returncode

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> ChildProcess:
        return self if self.is_running() else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
