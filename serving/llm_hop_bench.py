"""``python -m serving.llm_hop_bench``: the router's cost to a stream's first token and to the gaps between its
tokens, straight to Triton vs through it.

    python -m serving.llm_hop_bench --onnx-dir runs/llm/onnx --max-tokens 4
    python -m serving.llm_hop_bench --onnx-dir runs/llm/onnx --compare-tree /tmp/main   # before/after, one run

One run publishes the export's variant into a temporary repository, starts the real tritonserver on it and the
router in front of it with an A/A experiment (two arms on the one version, sticky at random), and streams one
completion at a time, alternating the paths request by request (A B, B A, ...): **direct** is Triton's own
``generate_stream`` (server-sent events), **router** the router's ``POST /v1/completions`` with ``stream: true``,
**router chat** its ``POST /v1/chat/completions`` with the held-out row's chat messages (which the model renders
with its template into the same prompt).
Both are read by the same client code (one keep-alive ``httpx`` connection per path, lines as they come), and
each request's TTFT is the time from sending it to the first event that carries text, its ITLs the gaps
between successive events that carry text; the stream is read to its end before the next request.
``--compare-tree DIR`` adds a router run from another checkout (``git archive COMMIT | tar -x -C DIR``) as a
third path, interleaved the same way: a change to the router is shown before and after in one run.

The requests are cut into ``--phases`` blocks; a difference (``router - direct``, of TTFT or of ITL) is the
mean of the per-block differences of the p50 (and p99) with a t interval over the blocks
(``tunestack.bench.compare``), so a machine whose speed drifts widens the interval instead of being read as a
difference. Completions are exactly ``--max-tokens`` tokens (``ignore_eos``), greedy, on the held-out prompts
of the export. On a shared machine the figures are noisy: run many requests, and read the paths of one run
side by side.

Writes ``reports/bench-llm-hop-TIMESTAMP/`` (bench.md, bench.json, the TTFT and ITL CDFs) and prints the table.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

from export.config import ExportConfig
from export.contract import GENERATIVE
from export.publish_causal import publish_causal
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack.bench import BenchOutput, BenchRun, compare, format_diff, markdown_table, summarize
from tunestack.cli import parse_dataclass
from tunestack.problems import raise_problems

HELP = ("The router's cost to a stream's first token and its inter-token gaps: publishes --onnx-dir's variant, "
        "starts tritonserver and the router (an A/A experiment) in front of it, and streams one --max-tokens "
        "completion at a time, alternating request by request between Triton's generate_stream (direct), the "
        "router's /v1/completions and its /v1/chat/completions (the row's chat, rendered by the model) (and, with "
        "--compare-tree, another checkout's router). Prints each path's TTFT and ITL p50/p99, the router's "
        "differences from direct with a 95 % interval over --phases blocks, and each router's CPU ms per stream; "
        "writes reports/bench-llm-hop-TIMESTAMP/. Figures, not pass/fail: on a shared machine run many requests.")
DIRECT, ROUTER, CHAT = "direct", "router", "router chat"
EXPERIMENT = "hop-bench"


@dataclass
class HopBenchConfig(BenchOutput):
    """The router's TTFT cost on one stream at a time (see the module docstring)."""

    onnx_dir: str = "runs/llm/onnx"
    """The causal LM's export folder (``python -m export``): its variant is published into a temporary repository."""
    variant: str = "fp32"
    """The variant to serve: fp32 or int8."""
    requests: int = 400
    """Measured requests per path."""
    phases: int = 8
    """Blocks the requests are cut into (>= 2); the differences' intervals have phases - 1 degrees of freedom."""
    warmup: int = 20
    """Warm-up requests per path (not measured)."""
    max_tokens: int = 4
    """Tokens per completion (generated past the EOS)."""
    compare_tree: str | None = None
    """Another checkout of this repository: its router runs beside this one as a third path, same Triton."""

    def __post_init__(self) -> None:
        problems = []
        if self.phases < 2:
            problems.append(f"phases must be at least 2 (the intervals are computed across phases), got {self.phases}")
        if self.requests < 2 * self.phases:
            problems.append(f"requests ({self.requests}) must be at least 2 x phases ({self.phases})")
        if self.max_tokens < 1 or self.warmup < 0:
            problems.append(f"max_tokens must be >= 1 and warmup >= 0, got {self.max_tokens} and {self.warmup}")
        if not (Path(self.onnx_dir) / "heldout.jsonl").is_file():
            problems.append(f"onnx_dir {self.onnx_dir} has no heldout.jsonl: not a causal LM export folder")
        raise_problems(problems, ValueError, "hop bench config")


class StreamClient:
    """One path's client: a keep-alive connection, and the request it sends for a held-out row."""

    def __init__(self, base_url: str, url_path: str, body: dict, fields: Callable[[dict], dict]):
        self.client = httpx.Client(base_url=base_url, timeout=60, trust_env=False)
        self.url_path, self.body, self.fields = url_path, body, fields

    def stream(self, row: dict) -> tuple[float, list[float]]:
        """Stream one completion of the held-out ``row`` to its end: the milliseconds to the first event carrying
        text (TTFT), and the gaps between successive events carrying text (ITL)."""
        start, times = time.perf_counter(), []
        with self.client.stream("POST", self.url_path, json={**self.body, **self.fields(row)}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: {") and self._text(json.loads(line[6:])):
                    times.append(time.perf_counter())
        if not times:
            raise RuntimeError(f"{self.client.base_url}{self.url_path} streamed no text for {row['prompt'][:40]!r}")
        return (times[0] - start) * 1000, (np.diff(times) * 1000).tolist()

    def _text(self, event: dict) -> str:
        """The text an event carries: Triton's output field, a completion's ``text`` or a chat chunk's content."""
        if "error" in event:
            raise RuntimeError(f"{self.client.base_url}{self.url_path} failed a stream: {event['error']}")
        if GENERATIVE.output_text in event:
            return event[GENERATIVE.output_text]
        choice = (event.get("choices") or [{}])[0]
        return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def chat_messages(row: dict) -> list[dict[str, str]]:
    """The held-out row's chat (its ``system`` and ``user`` fields), which the model's template renders into the
    row's ``prompt``."""
    return [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}]


Blocks = dict[str, dict[str, list[np.ndarray]]]
"""Figure (``ttft``, ``itl``) -> path -> one array of milliseconds per block."""


def measure(paths: dict[str, StreamClient], rows: list[dict], cfg: HopBenchConfig,
            processes: dict[str, psutil.Process]) -> tuple[Blocks, dict[str, float]]:
    """Warm up, then ``cfg.requests`` rounds, each one request per path in rotated order: TTFTs and ITLs by path
    and block, and each router process's CPU milliseconds per measured stream (all its threads)."""
    names = list(paths)
    for i in range(cfg.warmup):
        for name in names:
            paths[name].stream(rows[i % len(rows)])
    cpu = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
    ttft: dict[str, list[float]] = {name: [] for name in names}
    itl: dict[str, list[list[float]]] = {name: [] for name in names}
    for i in range(cfg.requests):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            first, gaps = paths[name].stream(rows[i % len(rows)])
            ttft[name].append(first)
            itl[name].append(gaps)
    streams = {name: cfg.requests * (2 if name == ROUTER and CHAT in paths else 1) for name in processes}
    cpu_ms = {name: round((sum(p.cpu_times()[:2]) - cpu[name]) * 1000 / streams[name], 3)  # this router's paths
              for name, p in processes.items()}
    edges = np.linspace(0, cfg.requests, cfg.phases + 1).round().astype(int)
    blocks: Blocks = {"ttft": {}, "itl": {}}
    for name in names:
        blocks["ttft"][name] = [np.asarray(ttft[name][a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        blocks["itl"][name] = [np.asarray([g for gaps in itl[name][a:b] for g in gaps])
                               for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return blocks, cpu_ms


def rows_of(blocks: Blocks, cpu_ms: dict[str, float]) -> list[dict]:
    rows = []
    for name in blocks["ttft"]:
        row = {"path": name, "ttft": summarize(np.concatenate(blocks["ttft"][name])),
               "itl": summarize(np.concatenate(blocks["itl"][name])), "router_cpu_ms_per_stream": cpu_ms.get(name)}
        if name != DIRECT:
            row["diff"] = compare(DIRECT, blocks["ttft"][DIRECT], blocks["ttft"][name])
            if row["itl"]["n"]:
                row["itl_diff"] = compare(DIRECT, blocks["itl"][DIRECT], blocks["itl"][name])
        rows.append(row)
    return rows


def table(document: dict) -> str:
    def cell(r: dict, key: str, q: str) -> str:
        return format_diff(r[key][q]) if key in r else "-"

    out = [[r["path"], r["ttft"]["n"], f"{r['ttft']['p50_ms']:.2f}", f"{r['ttft']['p99_ms']:.2f}",
            cell(r, "diff", "diff_p50_ms"), cell(r, "diff", "diff_p99_ms"),
            "-" if r["itl"]["n"] == 0 else f"{r['itl']['p50_ms']:.2f} / {r['itl']['p99_ms']:.2f}",
            cell(r, "itl_diff", "diff_p50_ms"), cell(r, "itl_diff", "diff_p99_ms"),
            "-" if r["router_cpu_ms_per_stream"] is None else f"{r['router_cpu_ms_per_stream']:.2f}"]
           for r in document["rows"]]
    return (f"{document['what']}\n\n" + markdown_table(
        ["path", "streams", "TTFT p50 ms", "TTFT p99 ms", "TTFT p50 minus direct, ms [95 % CI]",
         "TTFT p99 minus direct", "ITL p50 / p99 ms", "ITL p50 minus direct", "ITL p99 minus direct",
         "router CPU ms per stream"], out, "lrrrrrrrrr"))


def start_paths(cfg: HopBenchConfig, stack: ExitStack, tmp: Path, run: BenchRun
                ) -> tuple[dict[str, StreamClient], dict[str, psutil.Process]]:
    """Publish, start Triton and the router(s) (stopped by ``stack``): each path's client and prompt field, and
    each router's process."""
    model, repository = GENERATIVE.default_model_name, tmp / "model_repository"
    publish_causal(Path(cfg.onnx_dir), cfg.variant, ExportConfig(task="causal-lm", repository=repository,
                                                                model_name=model, instance_count=1))
    server = stack.enter_context(TritonServer(repository, startup_timeout=300, log_file=run.folder / "tritonserver.log"))
    spec = {"name": EXPERIMENT, "upstream": server.http_url, "timeout_s": 60.0, "sticky": "random",
            "arms": [{"name": arm, "model": model, "version": "1", "weight": 50} for arm in ("a", "b")]}
    routers = {ROUTER: None}
    if cfg.compare_tree:
        routers[f"{ROUTER} {Path(cfg.compare_tree).name}"] = Path(cfg.compare_tree).resolve()
    paths = {DIRECT: StreamClient(server.http_url, f"/v2/models/{model}/versions/1/generate_stream",
                                  {"max_tokens": cfg.max_tokens, "ignore_eos": True},
                                  lambda row: {GENERATIVE.input_text: row["prompt"]})}
    body = {"model": EXPERIMENT, "max_tokens": cfg.max_tokens, "ignore_eos": True, "stream": True}
    processes: dict[str, psutil.Process] = {}
    for i, (name, root) in enumerate(routers.items()):
        folder = tmp / f"router-{i}"  # each router its own experiment file, so its own default store
        folder.mkdir()
        (folder / "experiment.yaml").write_text(yaml.safe_dump(spec))
        router = stack.enter_context(RouterProcess(folder / "experiment.yaml", log_file=run.folder / f"router-{i}.log",
                                                   extra_args=["--log-level", "warning"],
                                                   **({"root": root} if root else {})))
        assert router.process is not None
        processes[name] = psutil.Process(router.process.pid)
        paths[name] = StreamClient(router.url, "/v1/completions", body, lambda row: {"prompt": row["prompt"]})
        if root is None:
            paths[CHAT] = StreamClient(router.url, "/v1/chat/completions", body,
                                       lambda row: {"messages": chat_messages(row)})
    for client in paths.values():
        stack.callback(client.client.close)
    return paths, processes


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(HopBenchConfig, argv, "python -m serving.llm_hop_bench", HELP)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwind: stop every server
    run = BenchRun("llm-hop", "The router's cost to the first token: direct to Triton vs through the router", cfg)
    rows = [json.loads(line) for line in (Path(cfg.onnx_dir) / "heldout.jsonl").read_text().splitlines()]
    with ExitStack() as stack:
        paths, processes = start_paths(cfg, stack, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hop-"))),
                                       run)
        blocks, cpu_ms = measure(paths, rows, cfg, processes)
    what = (f"TTFT and ITL of one stream at a time ({cfg.max_tokens} tokens, {cfg.variant}), paths alternating request by "
            f"request; differences over {cfg.phases} blocks")
    report = run.write({"what": what, "rows": rows_of(blocks, cpu_ms)}, table,
                       {f"{figure}_cdf": {n: np.concatenate(b) for n, b in by_path.items()}
                        for figure, by_path in blocks.items()})
    print(table(report.data))
    print(f"\nwritten: {report.folder} (bench.md, bench.json, TTFT and ITL CDFs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
