"""Router overhead: the same closed-loop load straight to Triton and through the router, in one run.

    python -m serving.router_bench                       # starts Triton on model_repository/ and a router
    python -m serving.router_bench --triton-url http://127.0.0.1:8000 --requests 4000 --concurrency 1,4

Both paths use ``tritonclient.http`` with one client per worker thread and the same request (one
review, binary tensors). The router runs an A/A experiment (both arms on the same model version), so
the only difference between the paths is the router hop. Phases alternate (direct, router, direct,
router, ...) so drift hits both alike. Writes ``reports/router_bench.json`` and prints a table:
p50 and p99 per path and the differences with 95 % bootstrap intervals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
import yaml

from export.contract import CONTRACT
from serving.client import text_input
from serving.router import stats
from serving.router.process import RouterProcess
from serving.triton import TritonServer

TEXT = "A quietly moving film whose performances carry a thin script further than it deserves to go."


def run_load(address: str, model: str, version: str, requests: int, concurrency: int, user_offset: int) -> np.ndarray:
    """Closed loop: ``concurrency`` threads send ``requests`` requests in all; per-request latency in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_worker = requests // concurrency
    errors: list[str] = []

    def worker(w: int) -> None:
        client = httpclient.InferenceServerClient(address)
        tensor = text_input(httpclient, [TEXT])
        mine = []
        try:
            for i in range(per_worker):
                headers = {"X-User-Id": f"bench-{user_offset + w * per_worker + i}"}
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


def ms(x: float) -> float:
    return round(x * 1000, 3)


def bench(triton_address: str, router_address: str, model: str, version: str, experiment: str, requests: int,
          concurrency: int, phases: int, warmup: int) -> dict:
    run_load(triton_address, model, version, warmup, 1, 0)
    run_load(router_address, experiment, "", warmup, 1, 0)
    direct, routed = [], []
    for phase in range(phases):
        n = requests // phases
        direct.append(run_load(triton_address, model, version, n, concurrency, phase * n))
        routed.append(run_load(router_address, experiment, "", n, concurrency, phase * n))
    d, r = np.concatenate(direct), np.concatenate(routed)
    row = {"concurrency": concurrency, "requests_per_path": int(len(d))}
    for name, x in (("direct", d), ("router", r)):
        row[name] = {"p50_ms": ms(stats.quantile(x, 0.5)), "p99_ms": ms(stats.quantile(x, 0.99)),
                     "mean_ms": ms(float(x.mean()))}
    for q in (0.5, 0.99):
        ci = stats.quantile_diff_ci(d, r, q)
        row[f"overhead_p{round(q * 100)}_ms"] = {"estimate": ms(ci.estimate), "low": ms(ci.low), "high": ms(ci.high)}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.router_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--triton-url", default=None, help="a running Triton's HTTP URL; default: start one on --repository")
    p.add_argument("--repository", default="model_repository", help="model repository for the Triton started here")
    p.add_argument("--model", default=CONTRACT.default_model_name, help="Triton model name")
    p.add_argument("--version", default="1", help="model version both paths use")
    p.add_argument("--requests", type=int, default=2000, help="requests per path and concurrency level")
    p.add_argument("--concurrency", default="1,4", help="comma-separated closed-loop concurrency levels")
    p.add_argument("--phases", type=int, default=4, help="alternating direct/router phases")
    p.add_argument("--warmup", type=int, default=100, help="warm-up requests per path (not measured)")
    p.add_argument("--shadow", action="store_true", help="also copy every request to a shadow (same version), to "
                   "show that the shadow adds no latency to the primary answer")
    p.add_argument("--out", default="reports/router_bench.json", help="JSON results")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        triton_url = args.triton_url
        if triton_url is None:
            server = stack.enter_context(TritonServer(args.repository, models=[args.model]))
            triton_url = server.http_url
        experiment = {"name": "router-bench", "upstream": triton_url, "timeout_s": 10.0, "sticky": {"header": "X-User-Id"},
                      "arms": [{"name": "a1", "model": args.model, "version": args.version, "weight": 50},
                               {"name": "a2", "model": args.model, "version": args.version, "weight": 50}]}
        if args.shadow:
            experiment["shadow"] = {"name": "shadow", "model": args.model, "version": args.version, "fraction": 1.0}
        exp_file = Path(tmp) / "experiment.yaml"
        exp_file.write_text(yaml.safe_dump(experiment))
        router = stack.enter_context(RouterProcess(exp_file, extra_args=["--log-level", "warning"]))
        triton_address = triton_url.removeprefix("http://")
        rows = [bench(triton_address, router.address, args.model, args.version, experiment["name"], args.requests, c,
                      args.phases, args.warmup) for c in levels]
    result = {"what": "closed-loop latency, tritonclient.http, 1 review per request, direct vs through the router",
              "model": args.model, "version": args.version, "shadow": args.shadow, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| concurrency | requests/path | direct p50 ms | router p50 ms | overhead p50 ms (95% CI) "
          "| direct p99 ms | router p99 ms | overhead p99 ms (95% CI) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o50, o99 = r["overhead_p50_ms"], r["overhead_p99_ms"]
        print(f"| {r['concurrency']} | {r['requests_per_path']} | {r['direct']['p50_ms']} | {r['router']['p50_ms']} | "
              f"{o50['estimate']} [{o50['low']}, {o50['high']}] | {r['direct']['p99_ms']} | {r['router']['p99_ms']} | "
              f"{o99['estimate']} [{o99['low']}, {o99['high']}] |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
