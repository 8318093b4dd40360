"""``python -m serving.llm_bench``: the generation benchmark, every option side by side in one run: a causal LM's
streams in-process (the limit), through Triton (HTTP generate_stream, gRPC stream; iteration-level batching
and a thread per stream), through the A/B router in front of Triton (OpenAI chat completions, streamed), and
through the peers a user would run instead (``serving.llm_peers``: transformers
``generate`` + ``TextIteratorStreamer`` behind FastAPI, onnxruntime-genai at fp32/int8/int4), at 1/2/4/8
concurrent streams.

    make bench-llm                                   # = python -m serving.llm_bench --onnx-dir runs/llm/onnx
    python -m serving.llm_bench --quick              # 1 and 8 streams, 4 tokens, 2 phases (the e2e test's)

One run publishes the export's variant into a temporary repository (one model per ``--batching`` mode,
``export.publish_causal``), starts the real tritonserver on it, opens the same modes in-process
(``export.scheduler`` over ``export.generate.Generator``: the code the served model runs, without Triton),
starts the router with an A/A experiment per model (``python -m serving router``, its OpenAI door), builds
the onnxruntime-genai models from the merged folder the export came from (its builder, in a child
process) and starts each peer (``python -m serving.llm_peers`` on 127.0.0.1 and a free port); all of it is
stopped at the end. Every arm (path x batching x concurrency) runs once per phase, side by side
(``tunestack.bench.run_phases``, mirrored order), on the same held-out prompts in the same phase, after one
warm-up completion per path. In an arm, ``c`` client threads start together and each streams ``--requests``
completions of exactly ``--new-tokens`` tokens (past the EOS token), greedy (``serving.llm_bench_paths``).
Per arm (``serving.llm_bench_report``, with vLLM's definitions: ``tunestack.bench.streams``): output tokens/s,
TTFT, ITL, TPOT, e2e latency, goodput under ``--slo-ttft-ms``/``--slo-tpot-ms``; the report's ``ratios``
are the product's goals. After the phases, ``--ttft-rounds`` rounds per served path stream one request at a time
through that path and in-process in turn, on one prompt: each pair shares its prompt and its second of the
machine, so the paired differences measure a path's cost to the first token (the router's goal) where arms
run as blocks cannot. The clients share the machine with the servers: on a small machine they are
part of what is measured.

Writes ``reports/bench-llm-TIMESTAMP/`` (bench.md, bench.json, latency CDFs, each server's log) and prints the
tables.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.config import ExportConfig, serving_defaults
from export.contract import DECODE_BATCHING, GENERATIVE, GENERATIVE_VARIANT_FILES
from export.generate import Generator
from export.onnx_causal import SOURCE_FILE
from export.publish_causal import publish_causal
from export.scheduler import make_scheduler
from serving.llm_bench_paths import (
    StreamerFactory,
    in_process_streamer,
    interleaved_ttft,
    openai_streamer,
    run_streams,
    triton_streamer,
)
from serving.llm_bench_report import (
    IN_PROCESS,
    PEER_BATCHING,
    ROUTER,
    SERVED,
    arm_name,
    batching_gain,
    goals,
    render,
    summarize_arm,
    ttft_differences,
)
from serving.llm_peers import PEERS, PeerServer
from serving.triton import TritonServer
from tunestack import names
from tunestack.bench import SLO, BenchOutput, BenchRun, run_phases
from tunestack.cli import parse_dataclass
from tunestack.files import sha256
from tunestack.problems import raise_problems

log = logging.getLogger(__name__)

TRANSPORTS = (IN_PROCESS, *SERVED, ROUTER)
"""in-process: the scheduler called directly; http: Triton's generate_stream (SSE); grpc: ModelStreamInfer;
router: OpenAI chat completions through the A/B router (``serving.router``) in front of Triton."""
QUICK = {"concurrency": (1, 8), "new_tokens": 4, "requests": 1, "phases": 2, "batching": ("continuous",),
         "ttft_rounds": 8}
"""What ``--quick`` sets: both goals' concurrency levels, short completions, two phases, the served batching,
a few interleaved TTFT rounds."""


@dataclass
class LLMBenchConfig(BenchOutput):
    """A causal LM's streams in-process vs Triton vs the peers, side by side (see the module docstring)."""

    onnx_dir: Path = Path("runs/llm/onnx")
    """The export folder (gated: parity.json), with heldout.jsonl for the prompts."""
    merged_dir: Path | None = None
    """The merged Hugging Face folder the export came from, for the peers (default: ONNX_DIR/../merged; its
    weights must be the ones export_source.json names)."""
    variant: str = "fp32"
    """The variant served (fp32 or int8)."""
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    """Concurrent streams per arm."""
    transports: tuple[str, ...] = TRANSPORTS
    """Paths of the project's decode loop: in-process, http, grpc, router."""
    batching: tuple[str, ...] = DECODE_BATCHING
    """Decode modes of those paths: continuous (iteration-level batching) and/or none (a thread per stream)."""
    peers: tuple[str, ...] = tuple(PEERS)
    """Peers measured beside them (none: an empty value): transformers, ortgenai-fp32, ortgenai-int8, ortgenai-int4."""
    new_tokens: int = 32
    """Tokens per completion (generated past the EOS token: every completion has this length)."""
    requests: int = 2
    """Completions each stream asks for per phase, one after another."""
    phases: int = 3
    """Times every arm runs, side by side with the others."""
    threads: int = 0
    """Intra-op threads of every engine (ONNX Runtime, torch; 0: the published default for this machine)."""
    max_sequences: int = 8
    """Streams decoded at once per model (the rest wait)."""
    ttft_rounds: int = 48
    """After the phases: rounds per served path of the served batching, each one request through it and one
    through in-process on the same prompt (the router's TTFT goal; 0: none)."""
    slo_ttft_ms: float = 2000.0
    """Goodput: a request's time to first token at most this (ms)."""
    slo_tpot_ms: float = 250.0
    """Goodput: a request's time per output token at most this (ms)."""
    quick: bool = False
    """Replace concurrency, new_tokens, requests, phases, batching and ttft_rounds with QUICK's (1 and 8 streams,
    4 tokens, 1 request, 2 phases, continuous, 8 rounds): the e2e test's setting."""

    def __post_init__(self) -> None:
        if self.quick:
            for name, value in QUICK.items():
                setattr(self, name, value)
        self.onnx_dir = Path(self.onnx_dir)
        self.merged_dir = Path(self.merged_dir) if self.merged_dir else self.onnx_dir.parent / "merged"
        problems = [f"unknown transport {t!r}; expected: {', '.join(TRANSPORTS)}" for t in self.transports
                    if t not in TRANSPORTS]
        problems += [f"unknown batching {b!r}; expected: {', '.join(DECODE_BATCHING)}" for b in self.batching
                     if b not in DECODE_BATCHING]
        problems += [f"unknown peer {p!r}; expected: {', '.join(PEERS)}" for p in self.peers if p not in PEERS]
        if self.variant not in GENERATIVE_VARIANT_FILES:
            problems.append(f"unknown variant {self.variant!r}; expected: {', '.join(GENERATIVE_VARIANT_FILES)}")
        for name in ("new_tokens", "requests", "phases", "max_sequences", "slo_ttft_ms", "slo_tpot_ms"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.ttft_rounds < 0:
            problems.append(f"ttft_rounds must be >= 0, got {self.ttft_rounds}")
        if not self.concurrency or min(self.concurrency) < 1:
            problems.append(f"concurrency must be one or more counts >= 1, got {self.concurrency}")
        if not self.batching:
            problems.append("batching must name at least one mode")
        raise_problems(problems, ValueError, "llm bench config")


def model_name(batching: str) -> str:
    return f"{GENERATIVE.default_model_name}-{batching}"


def read_prompts(onnx_dir: Path) -> list[dict]:
    """The held-out prompts: the rendered ``text`` and the chat ``messages`` it was rendered from."""
    prompts = []
    for row in map(json.loads, (onnx_dir / names.HELDOUT_FILE).read_text().splitlines()):
        messages = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + \
                   [{"role": "user", "content": row["user"]}]
        prompts.append({"text": row["prompt"], "messages": messages})
    return prompts


def checked_merged_dir(cfg: LLMBenchConfig) -> Path:
    """The merged folder, refused when its weights are not the ones the ONNX export was made from."""
    merged, source = cfg.merged_dir, cfg.onnx_dir / SOURCE_FILE
    if not (merged / "model.safetensors").is_file():
        raise FileNotFoundError(f"the peers need the merged folder: {merged / 'model.safetensors'} does not exist "
                                "(set --merged-dir, or --peers '' to measure without peers)")
    if source.is_file():
        expected, found = json.loads(source.read_text())["merged_sha256"], sha256(merged / "model.safetensors")
        if expected != found:
            raise ValueError(f"{merged} is not the model {cfg.onnx_dir} was exported from (sha256 {found[:12]}, "
                             f"{SOURCE_FILE} names {expected[:12]})")
    else:
        log.warning("%s has no %s: cannot check that %s is the same model", cfg.onnx_dir, SOURCE_FILE, merged)
    return merged


def decode_loop_paths(cfg: LLMBenchConfig, stack: ExitStack, folder: Path, report: Path, threads: int,
                      prompts: list[dict]) -> dict[tuple[str, str], StreamerFactory]:
    """In-process and Triton paths: publish, open the schedulers, start tritonserver; the prompts get their ids."""
    repository = folder / "model_repository"
    for batching in cfg.batching:
        publish_causal(cfg.onnx_dir, cfg.variant, ExportConfig(
            task="causal-lm", repository=repository, model_name=model_name(batching), decode_batching=batching,
            max_sequences=cfg.max_sequences, intra_op_threads=threads, instance_count=1))
    generator = Generator.from_folder(repository / model_name(cfg.batching[0]) / "1", threads=threads)
    for prompt in prompts:
        prompt["ids"] = generator.encode(prompt["text"])
    streamers = {}
    if IN_PROCESS in cfg.transports:
        for b in cfg.batching:
            scheduler = make_scheduler(b, generator, cfg.max_sequences)
            stack.callback(scheduler.close)
            streamers[(IN_PROCESS, b)] = in_process_streamer(scheduler, cfg.new_tokens)
    served = [t for t in cfg.transports if t != IN_PROCESS]
    if served:
        server = stack.enter_context(TritonServer(repository, startup_timeout=600, log_file=report / "tritonserver.log"))
        for t in served:
            for b in cfg.batching:
                if t == ROUTER:
                    streamers[(t, b)] = router_streamer(stack, server, folder, report, b, cfg.new_tokens)
                    continue
                url = server.grpc_url if t == "grpc" else server.http_address
                streamers[(t, b)] = triton_streamer(url, t, model_name(b), cfg.new_tokens)
    return streamers


def router_streamer(stack: ExitStack, server: TritonServer, folder: Path, report: Path, batching: str,
                    new_tokens: int) -> StreamerFactory:
    """The router in front of ``server`` (stopped by ``stack``), with an A/A experiment: two arms, 50/50, both
    ``model_name(batching)`` version 1, so every stream is assigned as in production and served by the same model;
    its OpenAI door's streamer (the experiment is the request's model)."""
    from experiments.spec import write_experiment
    from serving.router.process import RouterProcess

    name = f"bench-{batching}"
    experiment = write_experiment(folder / f"{name}.yaml", name, [("a", "1", 50), ("b", "1", 50)], model_name(batching),
                                  timeout_s=300.0)  # a burst's first tokens wait for each other's prefills
    router = stack.enter_context(RouterProcess(experiment, triton_url=server.http_url, triton_grpc_url=server.grpc_url,
                                               log_file=report / f"router-{batching}.log"))
    return openai_streamer(router.url, name, new_tokens)


def peer_paths(cfg: LLMBenchConfig, stack: ExitStack, folder: Path, report: Path,
               threads: int) -> dict[tuple[str, str], StreamerFactory]:
    """Build what each peer loads and start it (stopped by ``stack``)."""
    from serving.llm_peers.ortgenai_build import build_in_child

    if not cfg.peers:
        return {}
    merged, streamers = checked_merged_dir(cfg), {}
    for name in cfg.peers:
        engine, precision = PEERS[name]
        model_dir = merged if precision is None else build_in_child(
            merged, folder / name, precision, report / f"{name}-build.log")
        peer = stack.enter_context(PeerServer(name, engine, model_dir, GENERATIVE.default_model_name, threads,
                                              report / f"{name}.log"))
        streamers[(name, PEER_BATCHING)] = openai_streamer(peer.url, GENERATIVE.default_model_name, cfg.new_tokens)
    return streamers


def bench_arms(cfg: LLMBenchConfig, streamers: dict[tuple[str, str], StreamerFactory],
               prompts: list[dict]) -> tuple[dict[str, list[dict]], dict[str, tuple[str, str, int]]]:
    """Every (path, batching, concurrency) arm, ``cfg.phases`` times, side by side: the results by arm name,
    and each arm's (path, batching, concurrency)."""
    arms, meta = {}, {}
    for c in cfg.concurrency:
        for (path, batching), make in streamers.items():
            name = arm_name(path, batching, c)
            meta[name] = (path, batching, c)

            def arm(phase: int, make=make, c=c, name=name) -> dict:
                shift = phase * c * cfg.requests % len(prompts)  # each phase its own prompts, the same for every arm
                result = run_streams(make, prompts[shift:] + prompts[:shift], c, cfg.requests)
                log.info("phase %d/%d  %-32s %7.1f tokens/s", phase + 1, cfg.phases, name,
                         sum(r.output_tokens for r in result["records"]) / result["wall_s"])
                return result

            arms[name] = arm
    warm = dict.fromkeys(streamers, False)

    def warmup(name: str) -> None:
        path, batching, _ = meta[name]
        if not warm[(path, batching)]:  # one short completion per path: sessions, connections, caches
            run_streams(streamers[(path, batching)], prompts, 1, 1)
            warm[(path, batching)] = True

    return run_phases(arms, cfg.phases, warmup=warmup, mirror=True), meta


def interleaved_rounds(cfg: LLMBenchConfig, streamers: dict[tuple[str, str], StreamerFactory], prompts: list[dict],
                       served: str) -> dict[str, dict[str, list[float]]]:
    """``cfg.ttft_rounds`` rounds per served path of the decode loop in the ``served`` batching, each paired with
    in-process on one prompt (``interleaved_ttft``): per path, its TTFTs and in-process's (ms); {} when there
    are none."""
    reference = streamers.get((IN_PROCESS, served))
    paths = {path: make for (path, batching), make in streamers.items()
             if batching == served and path in TRANSPORTS and path != IN_PROCESS}
    if not cfg.ttft_rounds or reference is None or not paths:
        return {}
    log.info("TTFT: %d rounds of one request through each of %s, each paired with in-process", cfg.ttft_rounds,
             ", ".join(paths))
    return interleaved_ttft(reference, paths, prompts, cfg.ttft_rounds)


def run(cfg: LLMBenchConfig):
    bench = BenchRun("llm", "Generation: in-process vs Triton vs the router vs transformers and onnxruntime-genai peers", cfg)
    threads = cfg.threads or serving_defaults(os.cpu_count() or 1)["intra_op_threads"]
    prompts, slo = read_prompts(cfg.onnx_dir), SLO(ttft_ms=cfg.slo_ttft_ms, tpot_ms=cfg.slo_tpot_ms)
    served = "continuous" if "continuous" in cfg.batching else cfg.batching[0]
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llm-bench-")))
        streamers = decode_loop_paths(cfg, stack, folder, bench.folder, threads, prompts)
        streamers |= peer_paths(cfg, stack, folder, bench.folder, threads)
        results, meta = bench_arms(cfg, streamers, prompts)
        interleaved = interleaved_rounds(cfg, streamers, prompts, served)
    rows = {name: {"path": meta[name][0], "batching": meta[name][1], "concurrency": meta[name][2],
                   **summarize_arm(r, slo)} for name, r in results.items()}
    differences = ttft_differences(interleaved)
    data = {"intra_op_threads": threads, "merged_dir": str(cfg.merged_dir) if cfg.peers else None,
            "slo": slo.limits(), "arms": rows, "batching_gain": batching_gain(rows),
            "ttft_interleaved_ms": interleaved, "ttft_differences": differences,
            "ratios": goals(rows, served, differences)}
    top = max(cfg.concurrency)
    at_top = [name for name in results if meta[name][2] == top]
    cdfs = {f"{stem}_{top}_streams": {name: np.concatenate([getter(rec) for r in results[name] for rec in r["records"]])
                                      for name in at_top}
            for stem, getter in (("inter_token_latency", lambda rec: rec.itl_s * 1000),
                                 ("time_to_first_token", lambda rec: np.asarray([rec.ttft_s * 1000])))}
    return bench.write(data, render, cdfs=cdfs)


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
