"""Does the store cost the router latency? The same closed-loop load through a router without a store
(``--store memory``) and through one recording every answer (SQLite by default), in one run.

    python -m serving.router.store.bench --repository model_repository --model sentiment
    python -m serving.router.store.bench --store postgresql://... --requests 4000 --concurrency 1,4

Phases alternate (off, on, off, on, ...) so drift hits both alike; both routers run the same A/A
experiment on the same Triton. Prints p50/p99 per router and the differences with 95 % intervals, and
writes ``reports/store_bench.json``. The second part times the report's query on a store holding
``--rows`` answers (default 1e6, SQLite): insert, then ``snapshot`` (aggregates in SQL + the newest
latencies per arm) and the report built from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import yaml

from serving.router import stats
from serving.router.config import experiment_from_dict
from serving.router.process import RouterProcess
from serving.router.report import build_report
from serving.router.store import AnswerRow, open_store
from serving.router_bench import ms, run_load
from serving.triton import TritonServer


def latency_rows(triton_url: str, model: str, version: str, store: str | None, requests: int, levels: list[int],
                 phases: int, warmup: int, tmp: Path) -> list[dict]:
    experiment = {"name": "store-bench", "upstream": triton_url, "timeout_s": 10.0, "sticky": {"header": "X-User-Id"},
                  "arms": [{"name": "a1", "model": model, "version": version, "weight": 50},
                           {"name": "a2", "model": model, "version": version, "weight": 50}]}
    exp_file = tmp / "experiment.yaml"
    exp_file.write_text(yaml.safe_dump(experiment))
    on_args = ["--store", store] if store else []  # default: SQLite beside the experiment file
    with RouterProcess(exp_file, extra_args=["--log-level", "warning", "--store", "memory"]) as off, \
            RouterProcess(exp_file, extra_args=["--log-level", "warning", *on_args]) as on:
        rows = []
        for c in levels:
            run_load(off.address, "store-bench", "", warmup, 1, 0)
            run_load(on.address, "store-bench", "", warmup, 1, 0)
            got = {"off": [], "on": []}
            for phase in range(phases):
                n = requests // phases
                got["off"].append(run_load(off.address, "store-bench", "", n, c, phase * n))
                got["on"].append(run_load(on.address, "store-bench", "", n, c, phase * n))
            x_off, x_on = np.concatenate(got["off"]), np.concatenate(got["on"])
            row = {"concurrency": c, "requests_per_router": int(len(x_off))}
            for name, x in (("store_off", x_off), ("store_on", x_on)):
                row[name] = {"p50_ms": ms(stats.quantile(x, 0.5)), "p99_ms": ms(stats.quantile(x, 0.99))}
            for q in (0.5, 0.99):  # per phase pair, as router_bench: drift between phases widens the interval
                ci = stats.blocked_quantile_diff_ci(got["off"], got["on"], q)
                row[f"diff_p{round(q * 100)}_ms"] = {"estimate": ms(ci.estimate), "low": ms(ci.low), "high": ms(ci.high)}
            rows.append(row)
    return rows


async def _report_timing(url: str, rows: int, batch: int = 50_000) -> dict:
    """Insert ``rows`` answers (two arms), then time the snapshot query and the report built on it."""
    rng = np.random.default_rng(0)
    exp = experiment_from_dict({"name": "million", "arms": [{"name": "control", "model": "m", "weight": 50},
                                                             {"name": "treatment", "model": "m", "weight": 50}]})
    async with open_store(url) as store:
        start = time.perf_counter()
        now = time.time()
        for lo in range(0, rows, batch):
            n = min(batch, rows - lo)
            lat = rng.lognormal(-5, 0.3, n)
            await store.write_batch([AnswerRow("million", f"r{lo + i}", "control" if i % 2 else "treatment",
                                               "control" if i % 2 else "treatment", "1", f"u{i % 5000}",
                                               float(lat[i]), ("POSITIVE" if i % 3 else "NEGATIVE",), now)
                                     for i in range(n)])
        inserted = time.perf_counter() - start
        start = time.perf_counter()
        snapshot = await store.snapshot("million", 50_000)
        queried = time.perf_counter() - start
        start = time.perf_counter()
        build_report(exp, snapshot, 0.05, 2000, np.random.default_rng(0))
        built = time.perf_counter() - start
    return {"rows": rows, "insert_s": round(inserted, 2), "snapshot_query_s": round(queried, 3),
            "report_from_snapshot_s": round(built, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.router.store.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--triton-url", default=None, help="a running Triton's HTTP URL; default: start one on --repository")
    p.add_argument("--repository", default="model_repository", help="model repository for the Triton started here")
    p.add_argument("--model", default="sentiment", help="Triton model name")
    p.add_argument("--version", default="1", help="model version both arms use")
    p.add_argument("--store", default=None, help="store URL of the store-on router (default: SQLite, as the router's)")
    p.add_argument("--requests", type=int, default=2000, help="requests per router and concurrency level")
    p.add_argument("--concurrency", default="1,4", help="comma-separated closed-loop concurrency levels")
    p.add_argument("--phases", type=int, default=8, help="alternating off/on phases (>= 2: the intervals are across phases)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up requests per router (not measured)")
    p.add_argument("--rows", type=int, default=1_000_000, help="answers for the report timing (0: skip it)")
    p.add_argument("--skip-latency", action="store_true", help="only the report timing (no Triton needed)")
    p.add_argument("--out", default="reports/store_bench.json", help="JSON results")
    args = p.parse_args(argv)
    result: dict = {"what": "router latency with and without the experiment store; report time on a big store"}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        if not args.skip_latency:
            triton_url = args.triton_url
            if triton_url is None:
                triton_url = stack.enter_context(TritonServer(args.repository, models=[args.model])).http_url
            levels = [int(c) for c in args.concurrency.split(",")]
            result["latency"] = latency_rows(triton_url, args.model, args.version, args.store, args.requests, levels,
                                             args.phases, args.warmup, Path(tmp))
        if args.rows:
            result["report"] = asyncio.run(_report_timing(f"sqlite:///{Path(tmp) / 'million.sqlite'}", args.rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if "latency" in result:
        print("| concurrency | requests/router | store off p50 ms | store on p50 ms | diff p50 ms (95% CI) "
              "| store off p99 ms | store on p99 ms | diff p99 ms (95% CI) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in result["latency"]:
            d50, d99 = r["diff_p50_ms"], r["diff_p99_ms"]
            print(f"| {r['concurrency']} | {r['requests_per_router']} | {r['store_off']['p50_ms']} | "
                  f"{r['store_on']['p50_ms']} | {d50['estimate']} [{d50['low']}, {d50['high']}] | "
                  f"{r['store_off']['p99_ms']} | {r['store_on']['p99_ms']} | {d99['estimate']} [{d99['low']}, {d99['high']}] |")
    if "report" in result:
        r = result["report"]
        print(f"\nreport on {r['rows']:,} answers (SQLite): insert {r['insert_s']} s, snapshot query "
              f"{r['snapshot_query_s']} s, report from the snapshot {r['report_from_snapshot_s']} s")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
