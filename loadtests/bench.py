"""``make bench``: in-process and served options side by side, on the same machine and the same texts.

In-process (``export.bench.run``): torch eager, ONNX Runtime fp32 and int8, batch 1 and 16.
Served, each under the same Locust load (``loadtests.run``) with the run's held-out reviews:

- ``triton-fp32`` / ``triton-int8``: Triton direct over HTTP, model versions 1 (fp32) and 2 (int8),
  published from ``runs/NAME/onnx`` into a temporary repository;
- ``router``: through the A/B router, every request routed to the fp32 arm (weights 100/0), so the
  difference to ``triton-fp32`` is the router's hop;
- ``baseline``: ``loadtests.baseline``, a Starlette service with a transformers ``pipeline`` on the merged
  torch model -- what a user would otherwise write.

For each served option: P50/P99 at a fixed, moderate Poisson arrival rate (open loop), and the maximum
throughput whose P99 stays under a stated bound (closed loop, users doubling until the bound breaks).
Writes ``reports/bench-TIMESTAMP/bench.json`` and ``bench.md`` (figures, not pass/fail).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from export.contract import CONTRACT
from loadtests.config import LoadTestConfig, LoadTestError
from loadtests.report import format_ms
from loadtests.run import run_loadtest
from loadtests.services import Service
from serving.router.process import RouterProcess

log = logging.getLogger(__name__)

SERVED = ("triton-fp32", "triton-int8", "router", "baseline")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class BenchConfig:
    """What ``make bench`` measures and how long each measurement runs."""

    run: str = _f("runs/demo", "run folder with merged/ (torch model, heldout.jsonl) and onnx/ (fp32, int8, parity.json)")
    out_dir: str = _f("reports", "results go to OUT_DIR/bench-TIMESTAMP/")
    options: str = _f(",".join(SERVED), f"served options to measure, comma-separated: {', '.join(SERVED)}")
    in_process: bool = _f(True, "also run the in-process benchmark (export.bench.run: torch, ONNX Runtime fp32/int8)")
    threads: int = _f(2, "intra-op threads: torch, ONNX Runtime in-process and in Triton, the baseline")
    iterations: int = _f(100, "in-process: timed iterations per backend and batch size")
    rate: float = _f(20.0, "served: the fixed, moderate arrival rate (requests/s, Poisson) for P50/P99")
    rate_time: str = _f("15s", "served: how long the fixed-rate run lasts")
    users: str = _f("1,2,4,8,16", "served: closed-loop user counts tried in order for the maximum throughput")
    level_time: str = _f("10s", "served: how long each user count runs")
    p99_bound_ms: float = _f(100.0, "served: the maximum throughput counts only levels with P99 <= this bound")

    def __post_init__(self) -> None:
        problems = []
        unknown = [o for o in self.option_list if o not in SERVED]
        if unknown:
            problems.append(f"unknown option(s) {unknown}; expected some of: {', '.join(SERVED)}")
        if self.rate <= 0 or self.p99_bound_ms <= 0 or self.threads < 1 or self.iterations < 1:
            problems.append("rate, p99_bound_ms, threads and iterations must be > 0")
        if not all(u.strip().isdigit() and int(u) > 0 for u in self.users.split(",")):
            problems.append(f"users must be comma-separated positive integers, got {self.users!r}")
        if problems:
            raise LoadTestError("invalid bench config:\n  - " + "\n  - ".join(problems))

    @property
    def option_list(self) -> list[str]:
        return [o.strip() for o in self.options.split(",") if o.strip()]


@dataclass
class BenchResult:
    json: Path
    markdown: Path
    data: dict = field(default_factory=dict)


def add_bench_arguments(parser) -> None:
    for name, f in BenchConfig.__dataclass_fields__.items():
        kind = type(f.default)
        help_ = f"{f.metadata['help']} (default: {f.default})"
        if kind is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=None,
                                help=help_)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=help_)


def publish_repository(onnx_dir: Path, repository: Path, threads: int) -> None:
    """fp32 as version 1, int8 as version 2 of CONTRACT.default_model_name, in a fresh repository."""
    from export.config import ExportConfig
    from export.publish import publish

    cfg = ExportConfig(repository=repository, model_name=CONTRACT.default_model_name, name=onnx_dir.parent.name,
                       intra_op_threads=threads)
    publish(onnx_dir, "fp32", cfg)
    publish(onnx_dir, "int8", cfg)


def write_experiment(path: Path, triton_url: str) -> Path:
    model = CONTRACT.default_model_name
    path.write_text(json.dumps({  # JSON is YAML
        "name": "bench", "upstream": triton_url, "timeout_s": 10.0, "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "fp32", "model": model, "version": "1", "weight": 100},
                 {"name": "int8", "model": model, "version": "2", "weight": 0}]}))
    return path


def measure(base: LoadTestConfig, cfg: BenchConfig, out: Path) -> dict:
    """P50/P99 at the fixed rate, then closed-loop levels until P99 passes twice the bound or errors appear."""
    fixed = run_loadtest(LoadTestConfig(**{**asdict(base), "arrival_rate": cfg.rate, "users": 1,
                                           "run_time": cfg.rate_time, "out_dir": str(out / "fixed-rate")}))
    summary = json.loads((fixed.folder / "summary.json").read_text())
    agg = summary["aggregated"]
    result = {"fixed_rate": {"rate": cfg.rate, "p50_ms": agg["p50_ms"], "p99_ms": agg["p99_ms"],
                             "error_rate": agg["error_rate"], "client_saturated": summary["client_saturated"],
                             "machine_busy": summary["machine_busy"],
                             "report": str(fixed.report)}, "levels": []}
    for users in (int(u) for u in cfg.users.split(",")):
        level = run_loadtest(LoadTestConfig(**{**asdict(base), "users": users, "run_time": cfg.level_time,
                                               "out_dir": str(out / f"users-{users}")}))
        s = json.loads((level.folder / "summary.json").read_text())
        a = s["aggregated"]
        result["levels"].append({"users": users, "throughput_rps": a["throughput_rps"], "p50_ms": a["p50_ms"],
                                 "p99_ms": a["p99_ms"], "error_rate": a["error_rate"],
                                 "client_saturated": s["client_saturated"], "machine_busy": s["machine_busy"],
                                 "report": str(level.report)})
        if a["error_rate"] > 0.01 or (a["p99_ms"] or 0) > 2 * cfg.p99_bound_ms:
            break
    result["max_throughput"] = max_throughput(result["levels"], cfg.p99_bound_ms)
    return result


def max_throughput(levels: list[dict], bound_ms: float, max_error_rate: float = 0.01) -> dict:
    """The level with the highest throughput among those with P99 <= ``bound_ms`` and few errors."""
    ok = [lv for lv in levels if lv["error_rate"] <= max_error_rate and lv["p99_ms"] is not None
          and lv["p99_ms"] <= bound_ms]
    best = max(ok, key=lambda lv: lv["throughput_rps"], default=None)
    return {"bound_ms": bound_ms, "throughput_rps": best["throughput_rps"] if best else None,
            "users": best["users"] if best else None, "p99_ms": best["p99_ms"] if best else None}


def run_served(cfg: BenchConfig, out: Path) -> dict:
    from serving.triton import TritonServer

    run = Path(cfg.run)
    texts = run / "merged" / "heldout.jsonl"
    results = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        publish_repository(run / "onnx", tmp / "repository", cfg.threads)
        triton = stack.enter_context(TritonServer(tmp / "repository", models=[CONTRACT.default_model_name],
                                                  log_file=out / "tritonserver.log"))
        common = {"texts": str(texts), "feedback_fraction": 0.0, "triton_metrics_url": triton.metrics_url}
        targets = {
            "triton-fp32": {"target": "triton", "host": triton.http_url, "versions": "1"},
            "triton-int8": {"target": "triton", "host": triton.http_url, "versions": "2"},
        }
        if "router" in cfg.option_list:
            router = stack.enter_context(RouterProcess(write_experiment(tmp / "bench.yaml", triton.http_url),
                                                              triton_url=triton.http_url, log_file=out / "router.log"))
            targets["router"] = {"target": "router", "host": router.url, "experiment": "bench"}
        if "baseline" in cfg.option_list:
            baseline = stack.enter_context(Service.baseline(run / "merged", threads=cfg.threads,
                                                            log_path=out / "baseline.log"))
            targets["baseline"] = {"target": "triton", "host": baseline.url, "model": "baseline",
                                   "triton_metrics_url": "none"}
        for option in cfg.option_list:
            log.info("served option %s", option)
            base = LoadTestConfig(**{**common, **targets[option]})
            results[option] = measure(base, cfg, out / option)
    return results


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def render(data: dict) -> str:
    cfg = data["config"]
    load = data["machine"]["load_average_at_start"][0]
    quiet = "a quiet machine" if load < 0.75 * data["machine"]["cpus"] else "other work competed for the cores"
    lines = [f"# Benchmarks: {Path(cfg['run']).name}", "",
             f"Machine: {data['machine']['cpus']} CPUs, {data['machine']['platform']}; threads {cfg['threads']}; "
             f"load average (1 min) before the benchmark {load:.1f} ({quiet}). Figures, not pass/fail: the "
             "load generator runs on the same machine as the servers.", ""]
    if data.get("in_process"):
        rows = data["in_process"]["results"]
        lines += ["## In-process (64-token sequences)", "", "| backend | batch | median ms | p99 ms | speed-up vs torch |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['backend']} | {r['batch_size']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} "
                  f"| {r['speedup_vs_torch']:.2f}x |" for r in rows] + [""]
    served = data.get("served") or {}
    if served:
        ref = served.get("baseline", {})
        ref_p50 = (ref.get("fixed_rate") or {}).get("p50_ms")
        ref_max = (ref.get("max_throughput") or {}).get("throughput_rps")
        bound = cfg["p99_bound_ms"]
        lines += ["## Served (Locust, real held-out reviews, one per request)", "",
                  f"P50/P99 at {cfg['rate']:g} req/s (Poisson arrivals, {cfg['rate_time']}); maximum throughput "
                  f"with P99 <= {bound:g} ms (closed loop, users {cfg['users']}, {cfg['level_time']} each). "
                  "Ratios are against the baseline (transformers pipeline): latency = baseline / option, "
                  "throughput = option / baseline.", "",
                  f"| option | P50 ms | P99 ms | latency ratio (P50) | max req/s (P99 <= {bound:g} ms) | at users "
                  "| throughput ratio | warnings |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for name, r in served.items():
            fr, mx = r["fixed_rate"], r["max_throughput"]
            runs = [fr, *r["levels"]]
            flags = [f for f, key in (("client saturated", "client_saturated"), ("machine busy", "machine_busy"))
                     if any(run[key] for run in runs)]
            tput = "n/a" if mx["throughput_rps"] is None else f"{mx['throughput_rps']:.1f}"
            lines.append(f"| {name} | {format_ms(fr['p50_ms'])} | {format_ms(fr['p99_ms'])} | {ratio(ref_p50, fr['p50_ms'])} | {tput} "
                         f"| {mx['users'] or 'n/a'} | {ratio(mx['throughput_rps'], ref_max)} | {', '.join(flags) or 'no'} |")
        lines += ["", "Per level (closed loop):", "", "| option | users | req/s | P50 ms | P99 ms | errors |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, r in served.items():
            lines += [f"| {name} | {lv['users']} | {lv['throughput_rps']:.1f} | {format_ms(lv['p50_ms'])} | {format_ms(lv['p99_ms'])} "
                      f"| {lv['error_rate']:.2%} |" for lv in r["levels"]]
        lines += ["", "Triton's dynamic batcher waits up to max_queue_delay (2 ms by default) for a batch: it is "
                  "part of every Triton and router latency above."]
    return "\n".join(lines) + "\n"


def run_bench(cfg: BenchConfig) -> BenchResult:
    run = Path(cfg.run)
    for needed in (run / "merged" / "heldout.jsonl", run / "merged" / "config.json", run / "onnx" / CONTRACT.onnx_file,
                   run / "onnx" / CONTRACT.onnx_int8_file):
        if not needed.is_file():
            raise LoadTestError(f"{needed} is missing; run `make export NAME={run.name}` first")
    out = Path(cfg.out_dir) / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    data = {"config": asdict(cfg), "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(),
                                               "load_average_at_start": psutil.getloadavg()},
            "in_process": None, "served": None}
    if cfg.in_process:
        from export import bench as export_bench

        log.info("in-process benchmark (torch, ONNX Runtime fp32/int8)")
        data["in_process"] = export_bench.run(run, 64, cfg.iterations, max(5, cfg.iterations // 10), cfg.threads, (1, 16))
    if cfg.option_list:
        data["served"] = run_served(cfg, out)
    (out / "bench.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(render(data))
    return BenchResult(out / "bench.json", out / "bench.md", data)
