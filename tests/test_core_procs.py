"""tunestack.procs: a child in its own process group, readiness by polling, a stop that leaves nothing."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest

from tunestack import names
from tunestack.procs import ChildProcess, StartError, free_port, http_ok, wait_for


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_free_port_is_bindable_on_localhost():
    port = free_port()
    with socket.socket() as s:
        s.bind((names.HOST, port))
    assert not http_ok(f"http://{names.HOST}:{port}/", timeout=0.5)


def test_ready_condition_then_stop_kills_the_whole_group(tmp_path):
    marker = tmp_path / "ready"
    # a parent that ignores SIGTERM and a grandchild: both must be gone after stop()
    code = (f"import signal, subprocess, sys, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"pathlib.Path({str(marker)!r}).write_text('x'); print('started', flush=True); time.sleep(600)")
    child = ChildProcess("sleeper", [sys.executable, "-c", code], tmp_path / "sleeper.log")
    with child:
        child.wait_until(marker.exists, timeout=60)
        pgid = child.pid
        assert group_alive(pgid)
        wait_for(lambda: "started" in child.log_tail(), timeout=60, what="the child's output in its log")
        exit_code = child.stop(grace=0.5)
    assert exit_code == -signal.SIGKILL
    wait_for(lambda: not group_alive(pgid), timeout=30, what="the process group gone")
    assert child.stop() is None  # twice is safe


def test_a_child_that_exits_early_is_a_start_error_with_its_log(tmp_path):
    child = ChildProcess("crasher", [sys.executable, "-c", "import sys; print('bad flag --x'); sys.exit(3)"],
                         tmp_path / "crasher.log")
    with child, pytest.raises(StartError, match=r"(?s)crasher exited with code 3 before it was ready.*bad flag --x"):
        child.wait_until(lambda: False, timeout=60)


def test_not_ready_by_the_deadline(tmp_path):
    child = ChildProcess("slow", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "slow.log")
    with child, pytest.raises(StartError, match="slow was not ready after 0 s"):
        child.wait_until(lambda: False, timeout=0.2)
    with pytest.raises(TimeoutError, match="never: not true after"):
        wait_for(lambda: False, timeout=0.1, what="never")


def test_names_are_consistent():
    assert names.TRITON_URL == f"http://{names.HOST}:{names.TRITON_HTTP_PORT}"
    assert len({names.TRITON_HTTP_PORT, names.TRITON_GRPC_PORT, names.TRITON_METRICS_PORT, names.ROUTER_PORT}) == 4


def test_kill_takes_the_whole_group_at_once(tmp_path):
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('up', flush=True); "
            "time.sleep(600)")
    child = ChildProcess("victim", [sys.executable, "-c", code], tmp_path / "victim.log").start()
    pgid = child.pid
    child.wait_until(lambda: "up" in child.log_tail(), timeout=60)
    assert child.kill() == -signal.SIGKILL and child.process is None
    wait_for(lambda: not group_alive(pgid), timeout=30, what="the killed group gone")
    assert child.kill() is None
