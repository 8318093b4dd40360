"""Router overhead: the same closed-loop load straight to Triton and through the router, in one run.

    python -m serving.router_bench                       # starts Triton on model_repository/ and a router
    python -m serving.router_bench --triton-url http://127.0.0.1:8000 --requests 4000 --concurrency 1,4,16

Every path sends the same request (one review, binary tensors) with one client per worker thread.
The router runs an A/A experiment (both arms on the same model version), so the only difference
between a routed path and its baseline is the router hop. Phases alternate (direct, router, direct,
router, ...) so drift hits every path alike. Writes ``reports/router_bench.json`` and prints a table:
p50 and p99 per path, the overheads over the baseline with 95 % intervals, and the router process's CPU
time per request (a figure that moves far less than latency on a busy machine). An overhead is the mean
of its per-phase differences (phase k of the path against phase k of its baseline), its interval a t
interval over them (``stats.blocked_quantile_diff_ci``): these machines drift by several percent between
phases, and an interval that took every request as independent was far too narrow (it once put a
do-nothing proxy 0.56 ms [0.49, 0.63] *faster* than direct Triton).

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

import argparse
import contextlib
import json
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
from serving.router import stats
from serving.router.config import load_experiment, write_experiment
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack.names import HOST
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


def ms(x: float) -> float:
    return round(x * 1000, 3)


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def bench(paths: list[LoadPath], requests: int, concurrency: int, phases: int, warmup: int) -> dict:
    """One concurrency level: every path in alternating phases; per-path figures and overheads."""
    for p in paths:
        p.load(warmup, 1, 0)
    latencies: dict[str, list[np.ndarray]] = {p.name: [] for p in paths}
    cpu = dict.fromkeys(latencies, 0.0)
    n = requests // phases
    for phase in range(phases):
        for p in paths:
            before = _cpu_s(p.pid)
            latencies[p.name].append(p.load(n, concurrency, phase * n))
            cpu[p.name] += _cpu_s(p.pid) - before
    row: dict = {"concurrency": concurrency, "paths": {}}
    for p in paths:
        x = np.concatenate(latencies[p.name])
        row["paths"][p.name] = {"requests": int(len(x)), "p50_ms": ms(stats.quantile(x, 0.5)),
                                "p99_ms": ms(stats.quantile(x, 0.99)), "mean_ms": ms(float(x.mean()))}
        if p.pid is not None:
            row["paths"][p.name]["cpu_us_per_request"] = round(cpu[p.name] / len(x) * 1e6, 1)
        if p.baseline is not None:  # one difference per phase pair: drift between phases widens the interval
            for q in (0.5, 0.99):
                ci = stats.blocked_quantile_diff_ci(latencies[p.baseline], latencies[p.name], q)
                row["paths"][p.name][f"overhead_p{round(q * 100)}_ms"] = {
                    "vs": p.baseline, "estimate": ms(ci.estimate), "low": ms(ci.low), "high": ms(ci.high)}
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per concurrency level and compared path."""
    lines = ["| concurrency | path | requests | baseline p50 ms | p50 ms | overhead p50 ms (95% CI) "
             "| baseline p99 ms | p99 ms | overhead p99 ms (95% CI) | proxy CPU us/request |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, p in r["paths"].items():
            if "overhead_p50_ms" not in p:
                continue
            base = r["paths"][p["overhead_p50_ms"]["vs"]]
            o50, o99 = p["overhead_p50_ms"], p["overhead_p99_ms"]
            lines.append(f"| {r['concurrency']} | {name} | {p['requests']} | {base['p50_ms']} | {p['p50_ms']} | "
                         f"{o50['estimate']} [{o50['low']}, {o50['high']}] | {base['p99_ms']} | {p['p99_ms']} | "
                         f"{o99['estimate']} [{o99['low']}, {o99['high']}] | {p.get('cpu_us_per_request', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.router_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--triton-url", default=None, help="a running Triton's HTTP URL; default: start one on --repository")
    p.add_argument("--triton-grpc-url", default=None, help="that Triton's gRPC host:port; default: the one started "
                   "here, or the host of --triton-url at port 8001")
    p.add_argument("--repository", default="model_repository", help="model repository for the Triton started here")
    p.add_argument("--model", default=CONTRACT.default_model_name, help="Triton model name")
    p.add_argument("--version", default="1", help="model version both paths use")
    p.add_argument("--requests", type=int, default=2000, help="requests per path and concurrency level")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated closed-loop concurrency levels")
    p.add_argument("--phases", type=int, default=8, help="alternating direct/router phases (>= 2); the "
                   "overheads' intervals have phases - 1 degrees of freedom")
    p.add_argument("--warmup", type=int, default=100, help="warm-up requests per path (not measured)")
    p.add_argument("--shadow", action="store_true", help="also copy every request to a shadow (same version), to "
                   "show that the shadow adds no latency to the primary answer")
    p.add_argument("--store", default=None, help="the router's --store (default: the router's own default); "
                   "'memory' leaves out the experiment store's writes")
    p.add_argument("--compare-tree", default=None, help="another checkout of this repository (the code before a "
                   "change): its router runs beside this one, same Triton, same phases (HTTP and gRPC rows)")
    p.add_argument("--floor", action="store_true", help="also measure bare pass-through proxies (serving.proxy_floor: "
                   "asyncio+httptools, uvicorn ASGI, grpc.aio), the floor of a Python hop on this machine")
    p.add_argument("--out", default="reports/router_bench.json", help="JSON results")
    args = p.parse_args(argv)
    if args.phases < 2:
        p.error("--phases must be at least 2: the intervals are computed across phases")
    levels = [int(c) for c in args.concurrency.split(",")]
    # SIGTERM (a CI timeout, kill) unwinds like an error, so Triton, the routers and the floor are stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        triton_url = args.triton_url
        if triton_url is None:
            server = stack.enter_context(TritonServer(args.repository, models=[args.model]))
            triton_url = server.http_url
            args.triton_grpc_url = server.grpc_url
        exp_file = write_experiment(Path(tmp) / "experiment.yaml", "router-bench",
                                    [("a1", args.version, 50), ("a2", args.version, 50)], args.model, timeout_s=10.0,
                                    upstream=triton_url, shadow_version=args.version if args.shadow else None)
        spec = load_experiment(exp_file)
        triton_grpc = args.triton_grpc_url or spec.grpc_upstream_of(spec.arms[0])
        router_args = ["--log-level", "warning", *(["--store", args.store] if args.store else [])]
        router = stack.enter_context(RouterProcess(exp_file, triton_grpc_url=triton_grpc, extra_args=router_args))
        other = None
        if args.compare_tree is not None:  # its own copy of the experiment file, so its own default store
            other_exp = Path(tmp) / "compare" / exp_file.name
            other_exp.parent.mkdir()
            other_exp.write_text(exp_file.read_text())
            other = stack.enter_context(RouterProcess(other_exp, triton_grpc_url=triton_grpc, extra_args=router_args,
                                                      root=Path(args.compare_tree).resolve()))
        paths = load_paths(triton_url.removeprefix("http://"), triton_grpc, router, args.model, args.version,
                           spec.name, other)
        if args.floor:
            floor, ports = start_floor(triton_url, triton_grpc, Path(tmp) / "proxy_floor.log")
            stack.callback(floor.stop)
            paths += floor_paths(floor, ports, args.model, args.version)
        rows = [bench(paths, args.requests, c, args.phases, args.warmup) for c in levels]
    result = {"what": "closed-loop latency, tritonclient.http and .grpc, 1 review per request, direct vs through the router",
              "model": args.model, "version": args.version, "shadow": args.shadow, "store": args.store,
              "compare_tree": args.compare_tree, "floor": args.floor,
              "load_average": list(psutil.getloadavg()), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in psutil.getloadavg())} "
          f"on {psutil.cpu_count()} cores; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
