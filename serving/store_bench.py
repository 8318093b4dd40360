"""Does the store cost the router latency? The same closed-loop load through a router without a store
(``--store memory``) and through one recording every answer (SQLite by default), in one run.

    python -m serving.store_bench --repository model_repository --model sentiment
    python -m serving.store_bench --store postgresql://... --requests 4000 --concurrency 1,4

Phases alternate (off, on, on, off, ...: ``tunestack.bench.run_phases``, mirrored) so drift hits both alike;
both routers run the same A/A experiment on the same Triton. Prints p50/p99 per router and the differences
with per-phase 95 % intervals, and writes ``reports/bench-store-TIMESTAMP/``. The second part times the report's query on a store holding
``--rows`` answers (default 1e6; SQLite, or ``--report-store URL``) of realistic unit traffic
(``unit_traffic``: 10,000 users with Pareto activity, a four-period ramp): insert in the writer's batches,
then each read the report makes -- ``snapshot`` (aggregates in SQL + the newest latencies per arm), the
judge's ``unit_table`` -- the report built from them (the judge's verdicts and the per-arm intervals), and
the whole report from the store as ``GET .../report`` and ``experiments.store.cli report`` make it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from experiments.assignment import buckets
from experiments.experiment_report import build_report
from experiments.judge import JudgeConfig
from experiments.spec import Experiment, experiment_from_dict
from experiments.store import AnswerRow, ErrorRow, open_store
from experiments.store.sync import spec_of
from experiments.store.unit_table import table_for
from serving.router.process import RouterProcess
from serving.router_bench import run_load
from serving.triton import TritonServer
from tunestack.bench import (
    BenchOutput,
    BenchRun,
    compare,
    format_diff,
    markdown_table,
    run_phases,
    summarize,
)
from tunestack.cli import parse_dataclass
from tunestack.problems import raise_problems


def latency_rows(triton_url: str, model: str, version: str, store: str | None, requests: int, levels: list[int],
                 phases: int, warmup: int, tmp: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Per concurrency level: each router's summary (``store_off``, ``store_on``) and the store's cost (``diff_p50_ms``,
    ``diff_p99_ms`` of on against off, per phase); and every latency (ms) by router, for the CDF plot."""
    experiment = {"name": "store-bench", "upstream": triton_url, "timeout_s": 10.0, "sticky": {"header": "X-User-Id"},
                  "arms": [{"name": "a1", "model": model, "version": version, "weight": 50},
                           {"name": "a2", "model": model, "version": version, "weight": 50}]}
    exp_file = tmp / "experiment.yaml"
    exp_file.write_text(yaml.safe_dump(experiment))
    on_args = ["--store", store] if store else []  # default: SQLite beside the experiment file
    with RouterProcess(exp_file, extra_args=["--log-level", "warning", "--store", "memory"]) as off, \
            RouterProcess(exp_file, extra_args=["--log-level", "warning", *on_args]) as on:
        routers = {"store_off": off.address, "store_on": on.address}
        rows, samples = [], {name: [] for name in routers}
        for c in levels:
            n = requests // phases
            def phase_of(address: str, c: int = c, n: int = n):
                return lambda phase: 1000 * run_load(address, "store-bench", "", n, c, phase * n)

            got = run_phases({name: phase_of(address) for name, address in routers.items()}, phases, mirror=True,
                             warmup=lambda name: run_load(routers[name], "store-bench", "", warmup, 1, 0))
            row = {"concurrency": c, "requests_per_router": n * phases,
                   **{name: summarize(np.concatenate(blocks)) for name, blocks in got.items()},
                   **compare("store_off", got["store_off"], got["store_on"])}
            rows.append(row)
            for name, blocks in got.items():
                samples[name].extend(blocks)
    return rows, {name: np.concatenate(blocks) for name, blocks in samples.items()}


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


@dataclass
class StoreBenchConfig(BenchOutput):
    """Router latency with and without the experiment store, and the report's time on a big store."""

    triton_url: str | None = None
    """A running Triton's HTTP URL; default: start one on --repository."""
    repository: str = "model_repository"
    """Model repository for the Triton started here."""
    model: str = "sentiment"
    """Triton model name."""
    version: str = "1"
    """Model version both arms use."""
    store: str | None = None
    """Store URL of the store-on router (default: SQLite, as the router's)."""
    requests: int = 2000
    """Requests per router and concurrency level."""
    concurrency: str = "1,4"
    """Comma-separated closed-loop concurrency levels."""
    phases: int = 8
    """Alternating off/on phases (>= 2: the intervals are across phases)."""
    warmup: int = 100
    """Warm-up requests per router (not measured)."""
    rows: int = 1_000_000
    """Answers for the report timing (0: skip it)."""
    report_store: str | None = None
    """An empty store for the report timing (default: a temporary SQLite file), e.g. postgresql://... for PostgreSQL."""
    skip_latency: bool = False
    """Only the report timing (no Triton needed)."""

    def __post_init__(self) -> None:
        problems = []
        if self.phases < 2:
            problems.append(f"phases must be >= 2 (the intervals are across phases), got {self.phases}")
        if self.requests < self.phases:
            problems.append(f"requests must be >= phases ({self.phases}), got {self.requests}")
        if not all(c.strip().isdigit() and int(c) >= 1 for c in self.concurrency.split(",")):
            problems.append(f"concurrency must be comma-separated integers >= 1, like 1,4; got {self.concurrency!r}")
        if self.rows < 0 or self.warmup < 0:
            problems.append(f"rows and warmup must be >= 0, got {self.rows} and {self.warmup}")
        raise_problems(problems, ValueError, "store bench config")


def render(document: dict) -> str:
    """The latency table (p50/p99 per router, the store's cost with its interval) and the report timing line."""
    parts = []
    if "latency" in document:
        parts.append(markdown_table(
            ["concurrency", "requests/router", "store off p50 ms", "store on p50 ms", "diff p50 ms (95% CI)",
             "store off p99 ms", "store on p99 ms", "diff p99 ms (95% CI)"],
            [(r["concurrency"], r["requests_per_router"], r["store_off"]["p50_ms"], r["store_on"]["p50_ms"],
              format_diff(r["diff_p50_ms"]), r["store_off"]["p99_ms"], r["store_on"]["p99_ms"],
              format_diff(r["diff_p99_ms"])) for r in document["latency"]]))
    if "report" in document:
        r = document["report"]
        parts.append(f"Report on {r['rows']:,} answers ({r['store']}; insert {r['insert_s']} s), median of 5, wall / CPU s: "
                     + ", ".join(f"{name} {r[key]['wall_s']} / {r[key]['cpu_s']}" for name, key in (
                         ("snapshot query", "snapshot_query"), ("unit table", "unit_table"),
                         ("report built (judge + per-arm)", "report_build"), ("whole report", "whole_report")))
                     + f" ({r['unit_table_rows']:,} rows, {r['units']:,} units).")
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(StoreBenchConfig, argv, "python -m serving.store_bench", __doc__.split("\n\n")[0])
    run = BenchRun("store", "The experiment store: router latency with and without it; the report on a big store", cfg)
    result: dict = {"what": "router latency with and without the experiment store; report time on a big store"}
    cdfs = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        if not cfg.skip_latency:
            triton_url = cfg.triton_url
            if triton_url is None:
                triton_url = stack.enter_context(TritonServer(cfg.repository, models=[cfg.model])).http_url
            levels = [int(c) for c in cfg.concurrency.split(",")]
            result["latency"], cdfs["latency_cdf"] = latency_rows(triton_url, cfg.model, cfg.version, cfg.store,
                                                                  cfg.requests, levels, cfg.phases, cfg.warmup, Path(tmp))
        if cfg.rows:
            url = cfg.report_store or f"sqlite:///{Path(tmp) / 'million.sqlite'}"
            result["report"] = asyncio.run(_report_timing(url, cfg.rows))
    report = run.write(result, render, cdfs)
    print(render(report.data))
    print(f"written: {report.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
