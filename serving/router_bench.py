"""Router overhead: the same closed-loop load straight to Triton and through the router, in one run.

    python -m serving.router_bench                       # starts Triton on model_repository/ and a router
    python -m serving.router_bench --triton-url http://127.0.0.1:8000 --requests 4000 --concurrency 1,4,16

Every path sends the same request (one review, binary tensors) with one client per worker thread.
The router runs an A/A experiment (both arms on the same model version), so the only difference
between a routed path and its baseline is the router hop. Phases alternate (direct, router, direct,
router, ...; ``tunestack.bench.run_phases``) so drift hits every path alike. Writes
``reports/bench-router-TIMESTAMP/`` (``tunestack.bench``: bench.md, bench.json, a latency CDF per
concurrency level) and prints the table: p50 and p99 per path, the overheads over the baseline with 95 %
intervals, and the router process's CPU time per request (a figure that moves far less than latency on a
busy machine). An overhead (``diff_p50_ms``, ``diff_p99_ms``) is the mean of its per-phase differences
(phase k of the path against phase k of its baseline), its interval a t interval over them
(``tunestack.bench.compare``): these machines drift by several percent between phases, and an interval
that takes every request as independent is far too narrow (it can put a do-nothing proxy 0.56 ms
[0.49, 0.63] *faster* than direct Triton).

A path is a ``LoadPath``: a name, a closed-loop load function, the path it is compared with, and the
process whose CPU it reports. HTTP ("direct", "router") and gRPC ("direct grpc" to Triton's gRPC port,
"router grpc" to the router's ``--grpc-port``) each get their own rows. ``--compare-tree DIR`` adds a
second router run from another checkout (``git worktree add DIR COMMIT``, or ``git archive COMMIT | tar -x
-C DIR``): its paths, "router DIR-NAME" and "router grpc DIR-NAME", are measured against the same direct
paths in the same phases, so a change to the router is shown before and after in one run. ``--floor``
adds the pass-through proxies of ``serving.proxy_floor`` ("floor raw", "floor asgi", "floor grpc"):
what a Python hop costs here before any router work, measured the same way.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.contract import CONTRACT
from serving.client import text_input
from serving.router.config import load_experiment, write_experiment
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack.bench import (
    BenchOutput,
    BenchRun,
    compare,
    format_diff,
    markdown_table,
    ms,  # noqa: F401 - serving.router.store.bench imports it from here
    run_phases,
    summarize,
)
from tunestack.cli import parse_dataclass
from tunestack.names import HOST
from tunestack.problems import raise_problems
from tunestack.procs import ChildProcess, free_port

TEXT = "A quietly moving film whose performances carry a thin script further than it deserves to go."


def run_load(address: str, model: str, version: str, requests: int, concurrency: int, user_offset: int,
             client_module=httpclient) -> np.ndarray:
    """Closed loop over HTTP (or ``tritonclient.grpc``): ``concurrency`` threads send ``requests`` in all;
    per-request latency in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_worker = requests // concurrency
    errors: list[str] = []

    def worker(w: int) -> None:
        client = client_module.InferenceServerClient(address)
        tensor = text_input(client_module, [TEXT])
        mine = []
        try:
            for i in range(per_worker):
                headers = {"x-user-id": f"bench-{user_offset + w * per_worker + i}"}  # gRPC metadata: lower case
                start = time.perf_counter()
                client.infer(model, [tensor], model_version=version, headers=headers)
                mine.append(time.perf_counter() - start)
        except Exception as e:  # reported after the run; a failed benchmark must not look like a fast one
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            client.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed: {errors[0]}")
    return np.array(latencies)


@dataclass(frozen=True)
class LoadPath:
    """One way to send the benchmark request."""

    name: str
    load: Callable[[int, int, int], np.ndarray]
    """(requests, concurrency, user offset) -> per-request latencies in seconds."""
    baseline: str | None = None
    """The path this one's overhead is measured against; None for a baseline itself."""
    pid: int | None = None
    """A process whose CPU time per request is reported (the router's)."""


def load_paths(triton_address: str, triton_grpc: str, router: RouterProcess, model: str, version: str,
               experiment: str, other: RouterProcess | None = None) -> list[LoadPath]:
    """The four paths above; with ``other`` (a router from another checkout) its HTTP and gRPC paths too."""
    pid = router.process.pid if router.process else None
    others = [] if other is None or other.process is None else [
        LoadPath(f"router {other.root.name}", partial(run_load, other.address, experiment, ""), baseline="direct",
                 pid=other.process.pid),
        LoadPath(f"router grpc {other.root.name}", partial(run_load, other.grpc_address, experiment, "",
                                                           client_module=grpcclient),
                 baseline="direct grpc", pid=other.process.pid)]
    return [LoadPath("direct", partial(run_load, triton_address, model, version)), *others,
            LoadPath("router", partial(run_load, router.address, experiment, ""), baseline="direct", pid=pid),
            LoadPath("direct grpc", partial(run_load, triton_grpc, model, version, client_module=grpcclient)),
            LoadPath("router grpc", partial(run_load, router.grpc_address, experiment, "", client_module=grpcclient),
                     baseline="direct grpc", pid=pid)]


def floor_paths(floor: ChildProcess, ports: dict[str, int], model: str, version: str) -> list[LoadPath]:
    """The pass-through proxies of ``serving.proxy_floor``: the client addresses Triton's model itself."""
    address = {name: f"{HOST}:{port}" for name, port in ports.items()}
    return [LoadPath("floor raw", partial(run_load, address["raw"], model, version), baseline="direct", pid=floor.pid),
            LoadPath("floor asgi", partial(run_load, address["asgi"], model, version), baseline="direct", pid=floor.pid),
            LoadPath("floor grpc", partial(run_load, address["grpc"], model, version, client_module=grpcclient),
                     baseline="direct grpc", pid=floor.pid)]


def start_floor(triton_url: str, triton_grpc: str, log_file: Path) -> tuple[ChildProcess, dict[str, int]]:
    """Start ``serving.proxy_floor`` in front of Triton on free ports; (the process, {"raw"|"asgi"|"grpc": port}),
    returned once all three listen. The caller stops it (``ChildProcess.stop``)."""
    ports = {name: free_port() for name in ("raw", "asgi", "grpc")}
    argv = [sys.executable, "-m", "serving.proxy_floor", "--upstream", triton_url, "--grpc-upstream", triton_grpc,
            *(x for name, port in ports.items() for x in (f"--{name}-port", str(port)))]
    child = ChildProcess("proxy floor", argv, log_file, cwd=Path(__file__).resolve().parents[1]).start()
    try:
        child.wait_until(lambda: all(_listening(port) for port in ports.values()), 30.0)
    except BaseException:
        child.stop()
        raise
    return child, ports


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def bench(paths: list[LoadPath], requests: int, concurrency: int, phases: int, warmup: int
          ) -> tuple[dict, dict[str, np.ndarray]]:
    """One concurrency level: every path in alternating phases; (per-path figures and overheads, every path's
    latencies in ms)."""
    n = requests // phases
    by_name = {p.name: p for p in paths}
    cpu = dict.fromkeys(by_name, 0.0)

    def phase_of(p: LoadPath):
        def measure(phase: int) -> np.ndarray:
            before = _cpu_s(p.pid)
            latencies = p.load(n, concurrency, phase * n) * 1000
            cpu[p.name] += _cpu_s(p.pid) - before
            return latencies
        return measure

    blocks = run_phases({p.name: phase_of(p) for p in paths}, phases, warmup=lambda name: by_name[name].load(warmup, 1, 0))
    row: dict = {"concurrency": concurrency, "paths": {}}
    for p in paths:
        entry = summarize(np.concatenate(blocks[p.name]))
        if p.pid is not None:
            entry["cpu_us_per_request"] = round(cpu[p.name] / entry["n"] * 1e6, 1)
        if p.baseline is not None:  # one difference per phase pair: drift between phases widens the interval
            entry.update(compare(p.baseline, blocks[p.baseline], blocks[p.name]))
        row["paths"][p.name] = entry
    return row, {name: np.concatenate(b) for name, b in blocks.items()}


def table(document: dict) -> str:
    """Markdown: one line per concurrency level and compared path."""
    lines = []
    for r in document["rows"]:
        for name, p in r["paths"].items():
            if "diff_p50_ms" not in p:
                continue
            base = r["paths"][p["diff_p50_ms"]["vs"]]
            lines.append((r["concurrency"], name, p["n"], base["p50_ms"], p["p50_ms"], format_diff(p["diff_p50_ms"]),
                          base["p99_ms"], p["p99_ms"], format_diff(p["diff_p99_ms"]), p.get("cpu_us_per_request", "-")))
    return markdown_table(["concurrency", "path", "requests", "baseline p50 ms", "p50 ms", "overhead p50 ms (95% CI)",
                           "baseline p99 ms", "p99 ms", "overhead p99 ms (95% CI)", "proxy CPU us/request"], lines,
                          "rlrrrrrrrr")


@dataclass
class RouterBenchConfig(BenchOutput):
    """Router overhead: the same closed-loop load straight to Triton and through the router, in one run."""

    triton_url: str | None = None
    """A running Triton's HTTP URL; default: start one on --repository."""
    triton_grpc_url: str | None = None
    """That Triton's gRPC host:port; default: the one started here, or the host of --triton-url at port 8001."""
    repository: str = "model_repository"
    """Model repository for the Triton started here."""
    model: str = CONTRACT.default_model_name
    """Triton model name."""
    version: str = "1"
    """Model version both paths use."""
    requests: int = 2000
    """Requests per path and concurrency level."""
    concurrency: tuple[int, ...] = (1, 4, 16)
    """Comma-separated closed-loop concurrency levels."""
    phases: int = 8
    """Alternating direct/router phases (>= 2); the overheads' intervals have phases - 1 degrees of freedom."""
    warmup: int = 100
    """Warm-up requests per path (not measured)."""
    shadow: bool = False
    """Also copy every request to a shadow (same version), to show that the shadow adds no latency to the primary
    answer."""
    store: str | None = None
    """The router's --store (default: the router's own default); 'memory' leaves out the experiment store's writes."""
    compare_tree: str | None = None
    """Another checkout of this repository (the code before a change): its router runs beside this one, same
    Triton, same phases (HTTP and gRPC rows)."""
    floor: bool = False
    """Also measure bare pass-through proxies (serving.proxy_floor: asyncio+httptools, uvicorn ASGI, grpc.aio),
    the floor of a Python hop on this machine."""

    def __post_init__(self) -> None:
        problems = []
        if self.phases < 2:
            problems.append(f"phases must be at least 2 (the intervals are computed across phases), got {self.phases}")
        if self.requests < self.phases:
            problems.append(f"requests ({self.requests}) must be at least phases ({self.phases})")
        if not self.concurrency or min(self.concurrency) < 1 or self.warmup < 0:
            problems.append(f"concurrency levels must be >= 1 and warmup >= 0, got {self.concurrency} and {self.warmup}")
        raise_problems(problems, ValueError, "router bench config")


def measure_all(cfg: RouterBenchConfig, run: BenchRun, tmp: Path) -> tuple[list[dict], dict[str, dict]]:
    """Start Triton (unless given), the router(s) and the floor; every concurrency level. (rows, CDF samples)."""
    with ExitStack() as stack:
        triton_url, triton_grpc_url = cfg.triton_url, cfg.triton_grpc_url
        if triton_url is None:
            server = stack.enter_context(TritonServer(cfg.repository, models=[cfg.model]))
            triton_url, triton_grpc_url = server.http_url, server.grpc_url
        exp_file = write_experiment(tmp / "experiment.yaml", "router-bench",
                                    [("a1", cfg.version, 50), ("a2", cfg.version, 50)], cfg.model, timeout_s=10.0,
                                    upstream=triton_url, shadow_version=cfg.version if cfg.shadow else None)
        spec = load_experiment(exp_file)
        triton_grpc = triton_grpc_url or spec.grpc_upstream_of(spec.arms[0])
        router_args = ["--log-level", "warning", *(["--store", cfg.store] if cfg.store else [])]
        router = stack.enter_context(RouterProcess(exp_file, triton_grpc_url=triton_grpc, extra_args=router_args,
                                                   log_file=run.folder / "router.log"))
        other = None
        if cfg.compare_tree is not None:  # its own copy of the experiment file, so its own default store
            other_exp = tmp / "compare" / exp_file.name
            other_exp.parent.mkdir()
            other_exp.write_text(exp_file.read_text())
            other = stack.enter_context(RouterProcess(other_exp, triton_grpc_url=triton_grpc, extra_args=router_args,
                                                      root=Path(cfg.compare_tree).resolve(),
                                                      log_file=run.folder / "router-compare.log"))
        paths = load_paths(triton_url.removeprefix("http://"), triton_grpc, router, cfg.model, cfg.version,
                           spec.name, other)
        if cfg.floor:
            floor, ports = start_floor(triton_url, triton_grpc, run.folder / "proxy_floor.log")
            stack.callback(floor.stop)
            paths += floor_paths(floor, ports, cfg.model, cfg.version)
        measured = [bench(paths, cfg.requests, c, cfg.phases, cfg.warmup) for c in cfg.concurrency]
    return [row for row, _ in measured], {f"latency_cdf_c{c}": samples
                                          for c, (_, samples) in zip(cfg.concurrency, measured, strict=True)}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(RouterBenchConfig, argv, "python -m serving.router_bench", __doc__.split("\n\n")[0])
    # SIGTERM (a CI timeout, kill) unwinds like an error, so Triton, the routers and the floor are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run = BenchRun("router", "Router overhead: direct to Triton vs through the router", cfg)
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        rows, cdfs = measure_all(cfg, run, Path(tmp))
    report = run.write({"what": "closed-loop latency, tritonclient.http and .grpc, 1 review per request, direct vs "
                                "through the router", "rows": rows}, table, cdfs)
    print(table(report.data))
    print(f"\nwritten: {report.folder} (bench.md, bench.json, latency CDFs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
