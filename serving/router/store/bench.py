"""Does the store cost the router latency? The same closed-loop load through a router without a store
(``--store memory``) and through one recording every answer (SQLite by default), in one run.

    python -m serving.router.store.bench --repository model_repository --model sentiment
    python -m serving.router.store.bench --store postgresql://... --requests 4000 --concurrency 1,4

Phases alternate (off, on, off, on, ...) so drift hits both alike; both routers run the same A/A
experiment on the same Triton. Prints p50/p99 per router and the differences with 95 % intervals, and
writes ``reports/store_bench.json``. The second part times the report's query on a store holding
``--rows`` answers (default 1e6; SQLite, or ``--report-store URL``) of realistic unit traffic
(``unit_traffic``: 10,000 users with Pareto activity, a four-period ramp): insert in the writer's batches,
then each read the report makes -- ``snapshot`` (aggregates in SQL + the newest latencies per arm), the
judge's ``unit_table`` -- the report built from them (the judge's verdicts and the per-arm intervals), and
the whole report from the store as ``GET .../report`` and ``serving report --store`` make it.
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

from serving.judge import JudgeConfig
from serving.router.assignment import buckets
from serving.router.config import Experiment, experiment_from_dict
from serving.router.process import RouterProcess
from serving.router.report import build_report
from serving.router.store import AnswerRow, ErrorRow, open_store
from serving.router.store.sync import spec_of
from serving.router.store.unit_table import table_for
from serving.router_bench import ms, run_load
from serving.triton import TritonServer
from tunestack.bench.stats import blocked_quantile_diff_ci, quantile


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
                row[name] = {"p50_ms": ms(quantile(x, 0.5)), "p99_ms": ms(quantile(x, 0.99))}
            for q in (0.5, 0.99):  # per phase pair, as router_bench: drift between phases widens the interval
                ci = blocked_quantile_diff_ci(got["off"], got["on"], q)
                row[f"diff_p{round(q * 100)}_ms"] = {"estimate": ms(ci.estimate), "low": ms(ci.low), "high": ms(ci.high)}
            rows.append(row)
    return rows


def unit_traffic(rows: int, users: int = 10_000, seed: int = 0) -> tuple[Experiment, list[dict], list]:
    """Realistic traffic for the report timing: ``users`` sticky keys with Pareto activity (a few users send
    most requests), 2 % unkeyed requests, a ramp of the treatment over four periods (1, 5, 25, 50 %: the
    store's revisions) with monotone sticky assignment, a slower treatment, 0.5 % server errors.
    Returns the experiment, the revisions' specs and the records, in arrival order."""
    rng = np.random.default_rng(seed)
    exp = experiment_from_dict({"name": "million", "sticky": {"header": "X-User-Id"},
                                "arms": [{"name": "control", "model": "m", "weight": 50},
                                         {"name": "treatment", "model": "m", "weight": 50}]})
    ramp = [exp.with_weights({"control": 100 - p, "treatment": p}) for p in (1, 5, 25, 50)]
    activity = rng.pareto(1.2, users) + 1
    user = rng.choice(users, size=rows, p=activity / activity.sum())
    keyed = rng.random(rows) >= 0.02
    period = np.minimum(np.arange(rows) * len(ramp) // rows, len(ramp) - 1)
    u = buckets("million", [f"user-{i}" for i in range(users)])[user]
    u = np.where(keyed, u, rng.random(rows))
    treated = u < np.array([e.shares["treatment"] for e in ramp])[period]
    latency = rng.lognormal(-5, 0.3, rows) * np.where(treated, 1.1, 1.0)
    failed = rng.random(rows) < 0.005
    positive = rng.random(rows) < 0.6
    confidence = rng.uniform(0.5, 1.0, rows)
    records: list = []
    for i in range(rows):
        arm = "treatment" if treated[i] else "control"
        key = f"user-{user[i]}" if keyed[i] else None
        if failed[i]:
            records.append(ErrorRow("million", arm, "503", 1.0, f"r{i}", key, arm, int(period[i]) + 1))
        else:
            records.append(AnswerRow("million", f"r{i}", arm, arm, "1", key, float(latency[i]),
                                     ("POSITIVE" if positive[i] else "NEGATIVE",), 1.0, (float(confidence[i]),),
                                     int(period[i]) + 1))
    return exp, [spec_of(e) for e in ramp], records


async def _timed(work, repeat: int) -> tuple[dict, object]:
    """Run ``work()`` ``repeat`` times: the median wall and process-CPU seconds (the CPU of every thread: the
    SQLite back-end reads in a worker thread) and the last result. On a shared machine the wall time carries
    the other processes' load; the CPU time much less of it."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = await work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": round(float(np.median(walls)), 3), "cpu_s": round(float(np.median(cpus)), 3)}, result


async def _report_timing(url: str, rows: int, batch: int = 2000, repeat: int = 5) -> dict:
    """Write ``rows`` answers of ``unit_traffic`` in the writer's batches, then time (median of ``repeat``) each
    read of the report (the snapshot query, the unit table), the report built from them (the judge and the
    per-arm intervals), and the whole report from the store (reads and build, as the router makes it)."""
    exp, specs, records = unit_traffic(rows)
    config = JudgeConfig()
    async with open_store(url) as store:
        for spec in specs:
            await store.add_revision("million", spec, "admin", "bench", "ramp")
        start = time.perf_counter()
        for lo in range(0, rows, batch):
            await store.write_batch(records[lo:lo + batch])
        inserted = time.perf_counter() - start
        snapshot_t, snapshot = await _timed(lambda: store.snapshot("million", 50_000), repeat)
        table_t, table = await _timed(lambda: table_for(store, "million", exp.arm_names, config), repeat)

        async def build() -> dict:
            return build_report(exp, snapshot, table, 0.05, 2000, np.random.default_rng(0), config=config)

        async def whole() -> dict:
            got_snapshot = await store.snapshot("million", 50_000)
            got_table = await table_for(store, "million", exp.arm_names, config)
            return build_report(exp, got_snapshot, got_table, 0.05, 2000, np.random.default_rng(0), config=config)

        build_t, report = await _timed(build, repeat)
        whole_t, _ = await _timed(whole, repeat)
    return {"rows": rows, "store": url.split(":")[0], "insert_s": round(inserted, 2), "snapshot_query": snapshot_t,
            "unit_table": table_t, "report_build": build_t, "whole_report": whole_t, "unit_table_rows": table.rows,
            "units": int(len(np.unique(table.unit))), "headline": report["judge"]["headline"]}


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
    p.add_argument("--report-store", default=None, help="an empty store for the report timing (default: a "
                   "temporary SQLite file), e.g. postgresql://... for PostgreSQL")
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
            url = args.report_store or f"sqlite:///{Path(tmp) / 'million.sqlite'}"
            result["report"] = asyncio.run(_report_timing(url, args.rows))
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
        print(f"\nreport on {r['rows']:,} answers ({r['store']}; insert {r['insert_s']} s), median of 5, wall / CPU s: "
              + ", ".join(f"{name} {r[key]['wall_s']} / {r[key]['cpu_s']}" for name, key in (
                  ("snapshot query", "snapshot_query"), ("unit table", "unit_table"),
                  ("report built (judge + per-arm)", "report_build"), ("whole report", "whole_report")))
              + f" ({r['unit_table_rows']:,} rows, {r['units']:,} units)\njudge: {r['headline']}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
