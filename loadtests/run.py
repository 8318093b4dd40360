"""Run Locust headless (one process, or a master and N workers), watch it, and write the report.

``run_loadtest(cfg)`` checks that the target answers at all (``/v2/health/ready``; ``/v1/models`` for
target openai), then, in
``OUT_DIR/loadtest-TIMESTAMP/``:

1. ``config.json`` (the resolved settings); a scrape of Triton's ``/metrics``;
2. Locust as subprocesses in their own process groups, with ``--csv locust --csv-full-history --html
   --json-file``; their output goes to ``locust.log`` / ``locust-worker-N.log``;
3. while it runs, the CPU of every Locust process and of the machine, once a second, to ``client_cpu.csv``;
4. a second scrape of Triton's metrics (``triton_metrics.json``: per model version, the increase) and, for
   target router, the router's statistical report (``router_report.json`` and ``.md``);
5. ``run.json`` (command, exit codes, times) and the report (``loadtests.loadtest_report.build_report``).

Locust runs for ``cfg.run_time``, or until the caller sets ``stop_event`` (a test that ends the load on a
condition): then it gets SIGTERM and writes its statistics as at the end of its run time.

Every process it starts is stopped before it returns, whatever happens.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from loadtests import triton_metrics
from loadtests.config import LoadTestConfig, LoadTestError
from loadtests.loadtest_report import build_report
from tunestack.names import HOST
from tunestack.procs import ChildProcess, free_port, stop_process_groups

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
LOCUSTFILE = HERE / "locustfile.py"
SHAPES = HERE / "shapes.py"
PREFIX = "locust"


@dataclass
class LocustProcess:
    role: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class RunResult:
    folder: Path
    report: Path
    exit_code: int | None


def report_folder(out_dir: Path) -> Path:
    """``OUT_DIR/loadtest-YYYYmmdd-HHMMSS`` (with a suffix if two runs start in the same second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = Path(out_dir) / f"loadtest-{stamp}", 1
    while folder.exists():
        n += 1
        folder = Path(out_dir) / f"loadtest-{stamp}-{n}"
    folder.mkdir(parents=True)
    return folder


def user_class_of(cfg: LoadTestConfig) -> str:
    """The locustfile's user class for ``cfg``: the workload's, closed or open loop, HTTP or gRPC."""
    if cfg.workload == "chat":
        return "ChatOpenLoopUser" if cfg.open_loop else "ChatUser"
    return "GrpcUser" if cfg.protocol == "grpc" else "OpenLoopUser" if cfg.open_loop else "ClosedLoopUser"


def locust_commands(cfg: LoadTestConfig, folder: Path) -> list[tuple[str, list[str]]]:
    """(role, argv) for each Locust process: ``local``, or ``master`` and ``worker-1..N``."""
    files = f"{LOCUSTFILE},{SHAPES}" if cfg.shape != "none" else str(LOCUSTFILE)
    user_class = user_class_of(cfg)
    prefix = folder / PREFIX
    main = [sys.executable, "-m", "locust", "-f", files, "--headless", *cfg.locust_args(),
            "--csv", str(prefix), "--csv-full-history", "--html", str(folder / "locust.html"),
            "--json-file", f"{prefix}_stats", "--stop-timeout", str(max(2, int(cfg.request_timeout))),
            "--exit-code-on-error", "1", user_class]
    if cfg.workers == 1:
        return [("local", main)]
    port = free_port()
    master = main[:-1] + ["--master", "--master-bind-host", HOST, "--master-bind-port", str(port),
                          "--expect-workers", str(cfg.workers), "--expect-workers-max-wait", "60", user_class]
    # Workers get the same options: the locustfile reads --users (open loop: the rate per generator) and
    # its own options there; Locust itself takes -u/-t from the master.
    worker = [sys.executable, "-m", "locust", "-f", files, "--worker", "--master-host", HOST,
              "--master-port", str(port), *cfg.locust_args(), user_class]
    return [("master", master)] + [(f"worker-{i}", worker) for i in range(1, cfg.workers + 1)]


def start(commands: list[tuple[str, list[str]]], folder: Path) -> list[LocustProcess]:
    started = []
    try:
        for role, argv in commands:
            log_path = folder / ("locust.log" if role in ("local", "master") else f"locust-{role}.log")
            process = ChildProcess(f"locust {role}", argv, log_path).start().process
            started.append(LocustProcess(role, process, log_path))
    except BaseException:
        stop(started)
        raise
    return started


def stop(processes: list[LocustProcess], grace: float = 10.0) -> None:
    """SIGTERM each process group, wait ``grace`` seconds in all, then SIGKILL what is left."""
    stop_process_groups([p.process for p in processes], grace, "locust")


def watch(processes: list[LocustProcess], cpu_csv: Path, deadline_s: float, interval: float = 1.0,
          stop_event: threading.Event | None = None) -> None:
    """Sample the CPU of each Locust process and of the machine until the first one (local/master) exits or
    ``stop_event`` is set."""
    stop_event = stop_event or threading.Event()
    handles = {}
    for p in processes:
        try:
            handles[p.role] = psutil.Process(p.process.pid)
            handles[p.role].cpu_percent(None)  # the first call only starts the measurement
        except psutil.NoSuchProcess:
            pass
    psutil.cpu_percent(None)
    main, start_time = processes[0].process, time.monotonic()
    with open(cpu_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["elapsed_s", "role", "pid", "cpu_percent"])
        while main.poll() is None and not stop_event.wait(interval):
            elapsed = time.monotonic() - start_time
            for role, handle in handles.items():
                try:
                    writer.writerow([f"{elapsed:.1f}", role, handle.pid, f"{handle.cpu_percent(None):.1f}"])
                except psutil.NoSuchProcess:
                    continue
            writer.writerow([f"{elapsed:.1f}", "machine", "", f"{psutil.cpu_percent(None):.1f}"])
            f.flush()
            if elapsed > deadline_s:
                raise LoadTestError(f"locust did not finish within {deadline_s:.0f} s; stopped it (see the logs in "
                                    f"{cpu_csv.parent})")


def fetch_router_report(cfg: LoadTestConfig, folder: Path) -> None:
    url = f"{cfg.base_url}/v2/experiments/{cfg.experiment}/report"
    for fmt, name in (("json", "router_report.json"), ("markdown", "router_report.md")):
        try:
            response = httpx.get(url, params={"format": fmt}, timeout=30, trust_env=False).raise_for_status()
            (folder / name).write_bytes(response.content)
        except httpx.HTTPError as e:
            log.warning("cannot fetch the router's report from %s: %s", url, e)
            return


def check_target(cfg: LoadTestConfig) -> None:
    """Fail fast, with the command that starts it, when nothing answers at the target; warn when it is not ready."""
    url = f"{cfg.base_url}{'/v1/models' if cfg.target == 'openai' else '/v2/health/ready'}"
    try:
        response = httpx.get(url, timeout=5, trust_env=False)
    except httpx.HTTPError as e:
        start = {"router": "make router", "triton": "make serve"}.get(cfg.target, "python -m serving.llm_peers")
        raise LoadTestError(f"the {cfg.target} at {cfg.base_url} does not answer ({e}); start it (`{start}`) "
                            "or pass --host URL") from None
    if response.status_code != 200:  # it answers: a drill may load a degraded target on purpose
        log.warning("the %s at %s is not ready (%s answered %s); running anyway", cfg.target, cfg.base_url, url,
                    response.status_code)


def run_loadtest(cfg: LoadTestConfig, stop_event: threading.Event | None = None) -> RunResult:
    """Run the load test described by ``cfg`` (until ``stop_event`` is set, if that comes first) and write its
    report; see the module docstring."""
    if not Path(cfg.texts).is_file():
        make = "make export-llm" if cfg.workload == "chat" else "make export"
        raise LoadTestError(f"texts file {cfg.texts} does not exist; run `{make}` (it writes "
                            "runs/NAME/merged/heldout.jsonl) or pass --texts FILE")
    check_target(cfg)
    folder = report_folder(Path(cfg.out_dir))
    cfg.save(folder / "config.json")
    before, error = triton_metrics.try_scrape(cfg.metrics_url)
    commands = locust_commands(cfg, folder)
    started_at = time.time()
    processes = start(commands, folder)
    log.info("locust running (%s), %s; output in %s", ", ".join(p.role for p in processes), cfg.run_time, folder)
    try:
        watch(processes, folder / "client_cpu.csv", deadline_s=cfg.run_time_s + 90, stop_event=stop_event)
    finally:
        stop(processes)
    exit_code = processes[0].process.returncode
    after, error_after = triton_metrics.try_scrape(cfg.metrics_url) if before is not None else (None, error)
    triton = {"url": cfg.metrics_url, "error": error or error_after,
              "models": triton_metrics.deltas(before, after) if before is not None and after is not None else []}
    (folder / "triton_metrics.json").write_text(json.dumps(triton, indent=2) + "\n")
    if cfg.target == "router":
        fetch_router_report(cfg, folder)
    run_info = {"started_at": started_at, "finished_at": time.time(), "exit_codes": {
        p.role: p.process.returncode for p in processes}, "commands": {role: argv for role, argv in commands}}
    (folder / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    if not Path(folder / f"{PREFIX}_stats.csv").is_file():
        tail = (folder / "locust.log").read_text(errors="replace")[-3000:]
        raise LoadTestError(f"locust wrote no statistics (exit code {exit_code}); its log ends with:\n{tail}")
    return RunResult(folder, build_report(folder / PREFIX), exit_code)
