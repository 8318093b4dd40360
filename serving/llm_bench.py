"""``python -m serving.llm_bench``: a causal LM's streams in-process vs through Triton (HTTP generate_stream,
gRPC stream), with iteration-level batching and with a thread per stream, at 1/2/4/8 concurrent streams.

One run publishes the export's variant twice into a temporary repository (one model per ``--batching`` mode,
``export.publish_causal``), starts the real tritonserver on it, and opens the same modes in-process
(``export.scheduler`` over ``export.generate.Generator``: the code the served model runs, without Triton).
Every arm (transport x batching x concurrency) runs once per phase, side by side (``tunestack.bench.run_phases``,
mirrored order), on the same held-out prompts in the same phase. In an arm, ``c`` client threads start
together and each streams ``--requests`` completions of exactly ``--new-tokens`` tokens (``ignore_eos``),
greedy. Per arm: time to first token (request sent -> first token received), inter-token latency (gaps
between a stream's tokens), and tokens/s (all streams' tokens / the arm's wall time) per phase.
The clients share the machine with the server: on a small machine they are part of what is measured.

Writes ``reports/bench-llm-TIMESTAMP/`` (bench.md, bench.json, inter-token latency CDFs) and prints the tables.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.config import ExportConfig, serving_defaults
from export.contract import DECODE_BATCHING, GENERATIVE, GENERATIVE_VARIANT_FILES
from export.decoding import SamplingParams
from export.generate import Generator
from export.publish_causal import publish_causal
from export.scheduler import QueueSink, Scheduler, make_scheduler
from serving.llm_client import TritonLLM
from serving.triton import TritonServer
from tunestack.bench import BenchOutput, BenchRun, markdown_table, run_phases, summarize
from tunestack.cli import parse_dataclass
from tunestack.problems import raise_problems

log = logging.getLogger(__name__)

IN_PROCESS = "in-process"
TRANSPORTS = (IN_PROCESS, "http", "grpc")
"""in-process: the scheduler called directly; http: Triton's generate_stream (SSE); grpc: ModelStreamInfer."""

Streamer = Callable[[dict], Iterator[float]]
"""Streams one prompt (``{"text", "ids"}``), yielding ``time.perf_counter()`` as each token arrives."""


@dataclass
class LLMBenchConfig(BenchOutput):
    """Streams of an exported causal LM: in-process vs Triton HTTP vs gRPC, batched per step or not."""

    onnx_dir: Path = Path("runs/llm/onnx")
    """The export folder (gated: parity.json), with heldout.jsonl for the prompts."""
    variant: str = "fp32"
    """The variant served (fp32 or int8)."""
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    """Concurrent streams per arm."""
    transports: tuple[str, ...] = TRANSPORTS
    """Paths measured: in-process, http, grpc."""
    batching: tuple[str, ...] = DECODE_BATCHING
    """Decode modes measured: continuous (iteration-level batching) and/or none (a thread per stream)."""
    new_tokens: int = 32
    """Tokens per completion (generated past the EOS token: every completion has this length)."""
    requests: int = 2
    """Completions each stream asks for per phase, one after another."""
    phases: int = 3
    """Times every arm runs, side by side with the others."""
    threads: int = 0
    """ONNX Runtime intra-op threads per model (0: the published default for this machine)."""
    max_sequences: int = 8
    """Streams decoded at once per model (the rest wait)."""

    def __post_init__(self) -> None:
        self.onnx_dir = Path(self.onnx_dir)
        problems = [f"unknown transport {t!r}; expected: {', '.join(TRANSPORTS)}" for t in self.transports
                    if t not in TRANSPORTS]
        problems += [f"unknown batching {b!r}; expected: {', '.join(DECODE_BATCHING)}" for b in self.batching
                     if b not in DECODE_BATCHING]
        if self.variant not in GENERATIVE_VARIANT_FILES:
            problems.append(f"unknown variant {self.variant!r}; expected: {', '.join(GENERATIVE_VARIANT_FILES)}")
        for name in ("new_tokens", "requests", "phases", "max_sequences"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.concurrency or min(self.concurrency) < 1:
            problems.append(f"concurrency must be one or more counts >= 1, got {self.concurrency}")
        raise_problems(problems, ValueError, "llm bench config")


def model_name(batching: str) -> str:
    return f"{GENERATIVE.default_model_name}-{batching}"


def in_process_streamer(scheduler: Scheduler, new_tokens: int) -> Callable[[], Streamer]:
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)

    def stream(prompt: dict) -> Iterator[float]:
        sink = QueueSink()
        scheduler.submit(prompt["ids"], params, sink)
        for _ in sink:
            yield time.perf_counter()

    return lambda: stream


def triton_streamer(url: str, protocol: str, model: str, new_tokens: int) -> Callable[[], Streamer]:
    """A factory: each client thread makes its own (one ``TritonLLM`` runs one stream at a time)."""
    def make() -> Streamer:
        llm = TritonLLM(url, protocol, model, timeout=300)
        return lambda prompt: (c.received_s for c in llm.stream(prompt["text"], max_tokens=new_tokens, ignore_eos=True))

    return make


def run_streams(make: Callable[[], Streamer], prompts: list[dict], concurrency: int, requests: int) -> dict:
    """``concurrency`` threads start together, each streaming ``requests`` completions; their figures."""
    ttft: list[list[float]] = [[] for _ in range(concurrency)]
    itl: list[list[float]] = [[] for _ in range(concurrency)]
    tokens = [0] * concurrency
    barrier = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        stream = make()
        barrier.wait()
        try:
            for r in range(requests):
                sent = time.perf_counter()
                times = np.asarray(list(stream(prompts[(k * requests + r) % len(prompts)])))
                ttft[k].append((times[0] - sent) * 1000)
                itl[k].extend(np.diff(times) * 1000)
                tokens[k] += len(times)
        except BaseException as e:  # noqa: BLE001 - reported by the caller, after every thread ended
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"ttft_ms": [x for xs in ttft for x in xs], "itl_ms": [x for xs in itl for x in xs],
            "tokens": sum(tokens), "wall_s": wall}


def bench_arms(cfg: LLMBenchConfig, streamers: dict[tuple[str, str], Callable[[], Streamer]],
               prompts: list[dict]) -> tuple[dict[str, list[dict]], dict[str, tuple[str, str, int]]]:
    """Every (transport, batching, concurrency) arm, ``cfg.phases`` times, side by side: the results by arm name,
    and each arm's (transport, batching, concurrency)."""
    arms, meta = {}, {}
    for c in cfg.concurrency:
        for (transport, batching), make in streamers.items():
            name = f"{transport} / {batching} / {c}"
            meta[name] = (transport, batching, c)

            def arm(phase: int, make=make, c=c, name=name) -> dict:
                shift = phase * c * cfg.requests % len(prompts)  # each phase its own prompts, the same for every arm
                result = run_streams(make, prompts[shift:] + prompts[:shift], c, cfg.requests)
                log.info("phase %d/%d  %-28s %7.1f tokens/s", phase + 1, cfg.phases, name,
                         result["tokens"] / result["wall_s"])
                return result

            arms[name] = arm
    warm = {key: False for key in streamers}

    def warmup(name: str) -> None:
        transport, batching, _ = meta[name]
        if not warm[(transport, batching)]:  # one short completion per path: sessions, connections, caches
            run_streams(streamers[(transport, batching)], prompts, 1, 1)
            warm[(transport, batching)] = True

    return run_phases(arms, cfg.phases, warmup=warmup, mirror=True), meta


def summarize_arm(results: list[dict]) -> dict:
    rates = [r["tokens"] / r["wall_s"] for r in results]
    return {"tokens_per_s": round(float(np.mean(rates)), 2), "tokens_per_s_by_phase": [round(x, 2) for x in rates],
            "tokens": sum(r["tokens"] for r in results),
            "ttft": summarize([x for r in results for x in r["ttft_ms"]]),
            "itl": summarize([x for r in results for x in r["itl_ms"]])}


def batching_gain(rows: dict[str, dict]) -> list[dict]:
    """Per transport and concurrency: tokens/s with continuous batching over tokens/s with a thread per stream,
    as the mean of the per-phase ratios (each phase's arms ran side by side) with their range."""
    gains = []
    for name, row in rows.items():
        if row["batching"] != "continuous":
            continue
        other = rows.get(name.replace("/ continuous /", "/ none /"))
        if other is None:
            continue
        ratios = [a / b for a, b in zip(row["tokens_per_s_by_phase"], other["tokens_per_s_by_phase"], strict=True)]
        gains.append({"transport": row["transport"], "concurrency": row["concurrency"],
                      "ratio": round(float(np.mean(ratios)), 3), "low": round(min(ratios), 3),
                      "high": round(max(ratios), 3)})
    return gains


def render(document: dict) -> str:
    rows = document["arms"]
    table = markdown_table(
        ["transport", "batching", "streams", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms", "tokens"],
        [[r["transport"], r["batching"], r["concurrency"], f"{r['tokens_per_s']:.1f}",
          *(f"{r[k][q]:.1f}" for k in ("ttft", "itl") for q in ("p50_ms", "p99_ms")), r["tokens"]]
         for r in rows.values()], "lllrrrrrr")
    gains = markdown_table(["transport", "streams", "continuous / none tokens/s", "per-phase range"],
                           [[g["transport"], g["concurrency"], g["ratio"], f"{g['low']} - {g['high']}"]
                            for g in document["batching_gain"]], "lrrr")
    c = document["config"]
    return (f"{c['new_tokens']} tokens per completion (past EOS), {c['requests']} completions per stream per phase, "
            f"{c['phases']} phases, variant {c['variant']} of {c['onnx_dir']}.\n\n{table}\n\n"
            f"Iteration-level batching against a thread per stream (tokens/s ratio):\n\n{gains}\n")


def run(cfg: LLMBenchConfig) -> dict:
    bench = BenchRun("llm", "Causal LM streams: in-process vs Triton HTTP vs gRPC, batched per step or not", cfg)
    threads = cfg.threads or serving_defaults(os.cpu_count() or 1)["intra_op_threads"]
    prompts = [{"text": row["prompt"]} for row in map(json.loads, (cfg.onnx_dir / "heldout.jsonl").read_text().splitlines())]
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        repository = Path(tmp) / "model_repository"
        for batching in cfg.batching:
            publish_causal(cfg.onnx_dir, cfg.variant, ExportConfig(
                task="causal-lm", repository=repository, model_name=model_name(batching), decode_batching=batching,
                max_sequences=cfg.max_sequences, intra_op_threads=threads, instance_count=1))
        version = repository / model_name(cfg.batching[0]) / "1"
        generator = Generator.from_folder(version, threads=threads)  # one session: the arms run one at a time
        for prompt in prompts:
            prompt["ids"] = generator.encode(prompt["text"])
        schedulers = {b: make_scheduler(b, generator, cfg.max_sequences) for b in cfg.batching
                      if IN_PROCESS in cfg.transports}
        served = [t for t in cfg.transports if t != IN_PROCESS]
        server = TritonServer(repository, startup_timeout=600, log_file=bench.folder / "tritonserver.log") if served else None
        try:
            if server:
                server.start()
            streamers = {}
            for transport in cfg.transports:
                for b in cfg.batching:
                    if transport == IN_PROCESS:
                        streamers[(transport, b)] = in_process_streamer(schedulers[b], cfg.new_tokens)
                    else:
                        url = server.grpc_url if transport == "grpc" else server.http_address
                        streamers[(transport, b)] = triton_streamer(url, transport, model_name(b), cfg.new_tokens)
            results, meta = bench_arms(cfg, streamers, prompts)
        finally:
            if server:
                server.stop()
            for scheduler in schedulers.values():
                scheduler.close()
    rows = {name: {"transport": meta[name][0], "batching": meta[name][1], "concurrency": meta[name][2],
                   **summarize_arm(r)} for name, r in results.items()}
    data = {"intra_op_threads": threads, "arms": rows, "batching_gain": batching_gain(rows)}
    top = max(cfg.concurrency)
    cdfs = {f"inter_token_latency_{top}_streams": {name: np.asarray([x for r in results[name] for x in r["itl_ms"]])
                                                   for name in results if meta[name][2] == top}}
    report = bench.write(data, render, cdfs=cdfs)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    cfg = parse_dataclass(LLMBenchConfig, argv, "python -m serving.llm_bench", __doc__.split("\n\n")[0])
    report = run(cfg)
    print(render(report.data))
    print(f"written: {report.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
