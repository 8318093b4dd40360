"""``python -m serving.bench``: in-process ONNX Runtime vs Triton over HTTP vs gRPC, then 8 concurrent clients
with and without dynamic batching, all in one run on one published version. Figures, not a pass/fail test.

1. batch-1 latency over ``--requests`` requests, interleaved: in-process (``TextClassifier``: tokenizer + ONNX Runtime,
   the code ``model.py`` runs), Triton HTTP, Triton gRPC. Triton serves the version with dynamic batching
   *off* here, so a lone request does not wait for the batching window.
2. throughput of ``--concurrency`` client threads (one gRPC client each) for ``--duration`` seconds,
   with dynamic batching off, then on with the config's ``max_queue_delay_microseconds`` and with 0 us
   (batch only what is already queued); the version is reloaded with a config override each time, and
   the mean executed batch size comes from ``/v2/models/MODEL/stats``. The clients run in this process
   and share the machine with the server: on a small machine they are part of what is measured.

Texts are real Rotten Tomatoes snippets (the bundled corpus), cycled. Writes JSON, Markdown and a
latency CDF plot under ``reports/`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable
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


def review_texts(count: int) -> list[str]:
    try:
        from training.data import read_bundled

        return [e.text for e in read_bundled()[:count]]
    except Exception:  # noqa: BLE001 - the corpus is optional: fall back to a few fixed sentences
        return ["a fine film with a moving story", "a dull, overlong mess", "not bad at all", "the cast is superb"]


def summarize(latencies_s: list[float]) -> dict[str, float]:
    ms = np.array(latencies_s) * 1000
    return {"requests": len(ms), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def time_interleaved(calls: dict[str, Callable[[str], object]], texts: list[str], requests: int,
                     warmup: int = 20) -> dict[str, list[float]]:
    """Batch-1 latency of each path; request i goes through every path in turn, so a burst of background
    load on the machine hits all paths alike instead of whichever happened to run then."""
    for text in texts[:warmup]:
        for call in calls.values():
            call(text)
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(requests):
        text = texts[i % len(texts)]
        for name, call in calls.items():
            start = time.perf_counter()
            call(text)
            latencies[name].append(time.perf_counter() - start)
    return latencies


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
    flat = [x for per in latencies for x in per]
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


def run(repository: Path, model: str, version: int | None, requests: int, concurrency: int, duration: float,
        delay_us: int | None, tritonserver: str | None) -> dict:
    model_dir = repository / model
    config = triton_config.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    if triton_config.config_layout(config) != "python":
        raise SystemExit(f"{model_dir} is the onnxruntime (ensemble) layout, which this Triton cannot run")
    versions = existing_versions(model_dir)
    version = version or versions[-1]
    version_dir = model_dir / str(version)
    provenance = json.loads((version_dir / "provenance.json").read_text())
    delay_us = delay_us if delay_us is not None else (config.dynamic_batching.max_queue_delay_microseconds or 2000)
    threads = int(config.parameters["intra_op_threads"].string_value or 1)
    texts = review_texts(500)
    report: dict = {"model": model, "version": version, "variant": provenance.get("variant"),
                    "source_run": provenance.get("source", {}).get("run"), "intra_op_threads": threads,
                    "instance_count": config.instance_group[0].count if config.instance_group else 1,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "texts": len(texts), "batch1": {}, "throughput": {}}
    classifier = TextClassifier(version_dir, intra_op_threads=threads)
    with TritonServer(repository, models=[], startup_timeout=120, tritonserver=tritonserver) as server:
        load_version(server, config, version, batching=False, delay_us=delay_us)
        http = httpclient.InferenceServerClient(server.http_address)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        names = (CONTRACT.output_probabilities, CONTRACT.output_label)
        http_out = [httpclient.InferRequestedOutput(n) for n in names]
        grpc_out = [grpcclient.InferRequestedOutput(n) for n in names]
        try:
            raw = time_interleaved({
                "in-process ORT": lambda t: classifier.predict([t]),
                "Triton HTTP": lambda t: http.infer(model, [text_input(httpclient, [t])], outputs=http_out),
                "Triton gRPC": lambda t: grpc.infer(model, [text_input(grpcclient, [t])], outputs=grpc_out),
            }, texts, requests)
        finally:
            http.close()
            grpc.close()
        report["throughput"]["no dynamic batching"] = throughput(server, model, texts, concurrency, duration)
        for delay in dict.fromkeys([delay_us, 0]):  # the configured window, and batching only what is queued
            load_version(server, config, version, batching=True, delay_us=delay)
            report["throughput"][f"dynamic batching ({delay} us)"] = throughput(server, model, texts, concurrency, duration)
    report["batch1"] = {name: summarize(values) for name, values in raw.items()}
    report["_raw_batch1_ms"] = {name: [round(x * 1000, 4) for x in values] for name, values in raw.items()}
    return report


def format_table(report: dict) -> str:
    lines = [f"model {report['model']} v{report['version']} ({report['variant']}, run {report['source_run']}), "
             f"{report['machine']['cpus']} CPUs, intra-op threads {report['intra_op_threads']}", "",
             "| batch-1 latency | requests | median ms | p99 ms |", "|---|---:|---:|---:|"]
    for name, s in report["batch1"].items():
        lines.append(f"| {name} | {s['requests']} | {s['median_ms']:.2f} | {s['p99_ms']:.2f} |")
    lines += ["", "| throughput, batch-1 requests | clients | req/s | median ms | p99 ms | mean batch |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, s in report["throughput"].items():
        lines.append(f"| {name} | {s['concurrency']} | {s['requests_per_s']:.1f} | {s['median_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} | {s['mean_batch_size']:.2f} |")
    return "\n".join(lines)


def plot_cdf(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in report["_raw_batch1_ms"].items():
        xs = np.sort(values)
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
    ax.set(xlabel="batch-1 latency (ms)", ylabel="fraction of requests", title="batch-1 latency CDF")
    ax.set_xscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repository", default="model_repository", type=Path, help="model repository folder")
    p.add_argument("--model", default=CONTRACT.default_model_name, help="Triton model name")
    p.add_argument("--version", type=int, help="version to measure (default: the newest)")
    p.add_argument("--requests", type=int, default=1000, help="batch-1 requests per path (>= 1000 for the report)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads for the throughput runs")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per throughput run")
    p.add_argument("--max-queue-delay-us", type=int, help="batching window (default: config.pbtxt's, else 2000)")
    p.add_argument("--tritonserver", help="a tritonserver binary instead of nvidia-pytriton's")
    p.add_argument("--out", default=Path("reports/bench-serving.json"), type=Path, help="JSON report path")
    args = p.parse_args(argv)
    report = run(args.repository, args.model, args.version, args.requests, args.concurrency, args.duration,
                 args.max_queue_delay_us, args.tritonserver)
    table = format_table(report)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = report.pop("_raw_batch1_ms")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(f"# Serving benchmark\n\n{table}\n\n![latency CDF]({args.out.stem}-cdf.png)\n")
    plot_cdf({**report, "_raw_batch1_ms": raw}, args.out.with_name(f"{args.out.stem}-cdf.png"))
    print(f"\nwrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_name(args.out.stem + '-cdf.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
