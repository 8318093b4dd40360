"""Child processes the stack starts (tritonserver, the router, the baseline): ready checks and a stop
that never leaves anything behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200 (a health endpoint); False on any error or other status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(process: subprocess.Popen, timeout: float, name: str) -> int | None:
    """SIGTERM ``process`` (started with ``start_new_session=True``), wait up to ``timeout`` s for it to
    finish its in-flight work, then SIGKILL its whole process group (children included); its exit code."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing its process group", name, timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
    return process.returncode


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
