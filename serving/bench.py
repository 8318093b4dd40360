"""``python -m serving.bench``: in-process ONNX Runtime vs Triton over HTTP vs gRPC, then 8 concurrent clients
with and without dynamic batching, all in one run on one published version. Figures, not a pass/fail test.

1. batch-1 latency over ``--requests`` requests, interleaved request by request (``tunestack.bench.run_phases``):
   in-process (``TextClassifier``: tokenizer + ONNX Runtime, the code ``model.py`` runs), Triton HTTP, Triton
   gRPC; each path's difference from in-process with an interval over ``--phases`` blocks of consecutive
   requests. Triton serves the version with dynamic batching *off* here, so a lone request does not wait for
   the batching window.
2. throughput of ``--concurrency`` client threads (one gRPC client each) for ``--duration`` seconds,
   with dynamic batching off, then on with the config's ``max_queue_delay_microseconds`` and with 0 us
   (batch only what is already queued); the version is reloaded with a config override each time, and
   the mean executed batch size comes from ``/v2/models/MODEL/stats``. The clients run in this process
   and share the machine with the server: on a small machine they are part of what is measured.

Texts are real Rotten Tomatoes snippets (the bundled corpus), cycled. Writes ``reports/bench-serving-TIMESTAMP/``
(``tunestack.bench``: bench.md, bench.json, the batch-1 latency CDF) and prints the table.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export import triton_config
from export.contract import CONTRACT
from export.publish import existing_versions
from export.triton_model.model import TextClassifier
from serving.client import text_input
from serving.repository import ModelRepository
from serving.triton import TritonServer
from tunestack.bench import (
    BenchOutput,
    BenchRun,
    compare,
    format_diff,
    markdown_table,
    run_phases,
    split,
    summarize,
    time_each,
)
from tunestack.cli import parse_dataclass
from tunestack.problems import raise_problems

IN_PROCESS = "in-process ORT"
"""The batch-1 path the others are compared with."""


def review_texts(count: int) -> list[str]:
    try:
        from training.data import read_bundled

        return [e.text for e in read_bundled()[:count]]
    except Exception:  # noqa: BLE001 - the corpus is optional: fall back to a few fixed sentences
        return ["a fine film with a moving story", "a dull, overlong mess", "not bad at all", "the cast is superb"]


def time_interleaved(calls: dict[str, Callable[[str], object]], texts: list[str], requests: int,
                     warmup: int = 20) -> dict[str, np.ndarray]:
    """Batch-1 milliseconds of each path; request i goes through every path in turn, so a burst of background
    load on the machine hits all paths alike instead of whichever happened to run then."""
    per_request = run_phases({name: (lambda i, call=call: time_each(call, [texts[i % len(texts)]])[0])
                              for name, call in calls.items()}, requests,
                             warmup=lambda name: [calls[name](text) for text in texts[:warmup]])
    return {name: np.asarray(values) for name, values in per_request.items()}


def throughput(server: TritonServer, model: str, texts: list[str], concurrency: int, duration: float) -> dict:
    """``concurrency`` threads, one gRPC client each, sending batch-1 requests back to back."""
    stop_at = time.perf_counter() + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(k: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            i = k
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                client.infer(model, [text_input(grpcclient, [texts[i % len(texts)]])])
                latencies[k].append(time.perf_counter() - start)
                i += concurrency
        finally:
            client.close()

    before = model_stats(server, model)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    after = model_stats(server, model)
    executions = after["executions"] - before["executions"]
    inferences = after["inferences"] - before["inferences"]
    flat = [x * 1000 for per in latencies for x in per]
    return {**summarize(flat), "concurrency": concurrency, "seconds": elapsed, "requests_per_s": len(flat) / elapsed,
            "executions": executions, "mean_batch_size": inferences / executions if executions else 0.0}


def model_stats(server: TritonServer, model: str) -> dict[str, int]:
    with httpclient.InferenceServerClient(server.http_address) as client:
        stats = client.get_inference_statistics(model)["model_stats"]
    return {"inferences": sum(int(s["inference_count"]) for s in stats),
            "executions": sum(int(s["execution_count"]) for s in stats)}


def load_version(server: TritonServer, config, version: int, batching: bool, delay_us: int) -> None:
    original, config = config, type(config)()
    config.CopyFrom(original)
    config.version_policy.Clear()
    config.version_policy.specific.versions.append(version)
    config.ClearField("dynamic_batching")
    if batching:
        config.dynamic_batching.max_queue_delay_microseconds = delay_us
    with ModelRepository(server.http_address, timeout=300) as repository:
        repository.load_config(config.name, config, [version])


@dataclass
class ServingBenchConfig(BenchOutput):
    """In-process ONNX Runtime vs Triton over HTTP vs gRPC, then concurrent clients with and without dynamic
    batching, on one published version."""

    repository: Path = Path("model_repository")
    """Model repository folder."""
    model: str = CONTRACT.default_model_name
    """Triton model name."""
    version: int | None = None
    """Version to measure (default: the newest)."""
    requests: int = 1000
    """Batch-1 requests per path (>= 1000 for the report)."""
    phases: int = 10
    """Blocks of consecutive requests the batch-1 differences from in-process are computed over (>= 2)."""
    concurrency: int = 8
    """Client threads for the throughput runs."""
    duration: float = 15.0
    """Seconds per throughput run."""
    max_queue_delay_us: int | None = None
    """Batching window (default: config.pbtxt's, else 2000)."""
    tritonserver: str | None = None
    """A tritonserver binary instead of nvidia-pytriton's."""

    def __post_init__(self) -> None:
        problems = []
        if self.phases < 2 or self.requests < self.phases:
            problems.append(f"phases must be >= 2 and requests >= phases, got {self.phases} and {self.requests}")
        if self.concurrency < 1 or self.duration <= 0:
            problems.append(f"concurrency must be >= 1 and duration > 0, got {self.concurrency} and {self.duration}")
        raise_problems(problems, ValueError, "serving bench config")


def run(cfg: ServingBenchConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """Measure; (the figures, the batch-1 milliseconds by path)."""
    model_dir = cfg.repository / cfg.model
    config = triton_config.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    if triton_config.config_layout(config) != "python":
        raise SystemExit(f"{model_dir} is the onnxruntime (ensemble) layout, which this Triton cannot run")
    version = cfg.version or existing_versions(model_dir)[-1]
    version_dir = model_dir / str(version)
    provenance = json.loads((version_dir / "provenance.json").read_text())
    delay_us = cfg.max_queue_delay_us if cfg.max_queue_delay_us is not None else (
        config.dynamic_batching.max_queue_delay_microseconds or 2000)
    threads = int(config.parameters["intra_op_threads"].string_value or 1)
    texts = review_texts(500)
    report: dict = {"model": cfg.model, "version": version, "variant": provenance.get("variant"),
                    "source_run": provenance.get("source", {}).get("run"), "intra_op_threads": threads,
                    "instance_count": config.instance_group[0].count if config.instance_group else 1,
                    "texts": len(texts), "batch1": {}, "throughput": {}}
    classifier = TextClassifier(version_dir, intra_op_threads=threads)
    with TritonServer(cfg.repository, models=[], startup_timeout=120, tritonserver=cfg.tritonserver) as server:
        load_version(server, config, version, batching=False, delay_us=delay_us)
        http = httpclient.InferenceServerClient(server.http_address)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        names = (CONTRACT.output_probabilities, CONTRACT.output_label)
        http_out = [httpclient.InferRequestedOutput(n) for n in names]
        grpc_out = [grpcclient.InferRequestedOutput(n) for n in names]
        try:
            raw = time_interleaved({
                IN_PROCESS: lambda t: classifier.predict([t]),
                "Triton HTTP": lambda t: http.infer(cfg.model, [text_input(httpclient, [t])], outputs=http_out),
                "Triton gRPC": lambda t: grpc.infer(cfg.model, [text_input(grpcclient, [t])], outputs=grpc_out),
            }, texts, cfg.requests)
        finally:
            http.close()
            grpc.close()
        report["throughput"]["no dynamic batching"] = throughput(server, cfg.model, texts, cfg.concurrency, cfg.duration)
        for delay in dict.fromkeys([delay_us, 0]):  # the configured window, and batching only what is queued
            load_version(server, config, version, batching=True, delay_us=delay)
            report["throughput"][f"dynamic batching ({delay} us)"] = throughput(server, cfg.model, texts,
                                                                              cfg.concurrency, cfg.duration)
    base = split(list(raw[IN_PROCESS]), cfg.phases)
    report["batch1"] = {name: {**summarize(values), **({} if name == IN_PROCESS else compare(
        IN_PROCESS, base, split(list(values), cfg.phases)))} for name, values in raw.items()}
    return report, raw


def format_table(report: dict) -> str:
    lines = [f"model {report['model']} v{report['version']} ({report['variant']}, run {report['source_run']}), "
             f"intra-op threads {report['intra_op_threads']}", "",
             markdown_table(["batch-1 latency", "requests", "p50 ms", "p99 ms", "p50 vs in-process ms (95% CI)"],
                            [(name, s["n"], f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
                              format_diff(s["diff_p50_ms"]) if "diff_p50_ms" in s else "-")
                             for name, s in report["batch1"].items()], "lrrrr"), "",
             markdown_table(["throughput, batch-1 requests", "clients", "req/s", "p50 ms", "p99 ms", "mean batch"],
                            [(name, s["concurrency"], f"{s['requests_per_s']:.1f}", f"{s['p50_ms']:.2f}",
                              f"{s['p99_ms']:.2f}", f"{s['mean_batch_size']:.2f}")
                             for name, s in report["throughput"].items()], "lrrrrr")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(ServingBenchConfig, argv, "python -m serving.bench", __doc__.split("\n\n")[0])
    bench_run = BenchRun("serving", "Serving benchmark: in-process ORT vs Triton HTTP vs gRPC, dynamic batching", cfg)
    figures, raw = run(cfg)
    report = bench_run.write(figures, format_table, {"latency_cdf": raw})
    print(format_table(report.data))
    print(f"\nwritten: {report.folder} (bench.md, bench.json, latency_cdf.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
