"""The router's own work per HTTP request, without the network: its ASGI app, a canned Triton answer.

    python -m serving.handler_bench                          # this checkout
    python -m serving.handler_bench --compare-tree ../before # and another checkout, alternating

``serving.router_bench`` measures what a caller sees (the hop, Triton, the machine's noise all in it);
this measures the one part a change to the router moves: the ``POST /v2/models/NAME/infer`` path of
the router's app (parse, validate, assign, forward, tag the answer, record it) called directly, its
upstream a pool that answers at once with a recorded Triton answer (``serving.handler_timing``). Each
request is timed twice over:

- back to back, as a loop that never waits: the code's cost with every cache warm;
- after an idle gap (``--gap-ms``, 5 by default: about one Triton inference), as in a real router that
  sleeps while Triton works. On a machine whose idle cores slow down (virtual machines, power saving)
  the same code takes several times longer right after a wait; that, not the back-to-back figure, is
  what a router request costs on it.

Every tree runs in its own process; the trees alternate over ``--rounds`` (``tunestack.bench.run_phases``,
mirrored: A B, B A, ...). Per tree and gap: the summary of every request of every round, the p50 of each
round, and with ``--compare-tree`` the difference from this tree with a per-round interval. Prints the
table and writes ``reports/bench-handler-TIMESTAMP/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving import handler_timing
from serving.router.process import ROOT
from tunestack.bench import BenchOutput, BenchRun, compare, markdown_table, run_phases, summarize
from tunestack.cli import parse_dataclass
from tunestack.problems import raise_problems


async def measure(requests: int, gap_s: float, warmup: int = 300) -> dict:
    """The summary (milliseconds) of ``requests`` timed requests of this checkout's router app, ``gap_s`` idle
    before each."""
    return {"gap_ms": gap_s * 1000, **summarize(await handler_timing.time_requests(requests, gap_s, warmup))}


def run_tree(tree: Path, requests: int, gaps: list[float]) -> list[list[float]]:
    """Milliseconds per request for each gap, in a fresh process that imports the router from ``tree``."""
    code = (f"import sys, json, importlib.util; sys.path.insert(0, {str(tree)!r})\n"  # the router comes from tree
            f"spec = importlib.util.spec_from_file_location('handler_timing', {handler_timing.__file__!r})\n"
            "timing = importlib.util.module_from_spec(spec); spec.loader.exec_module(timing)\nimport uvloop\n"
            "import serving.router.app as app\n"  # not the installed package's, when tree has none
            f"assert app.__file__.startswith({str(tree)!r}), 'no router in this tree: ' + app.__file__\n"
            f"print(json.dumps([uvloop.run(timing.time_requests({requests}, g)) for g in {gaps!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tree, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"handler bench in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class HandlerBenchConfig(BenchOutput):
    """The router's own work per HTTP request, in process, this checkout and optionally another."""

    requests: int = 2000
    """Timed requests per tree, gap and round."""
    gap_ms: float = 5.0
    """Idle time before each request of the second run."""
    rounds: int = 3
    """Rounds; the trees alternate within each."""
    compare_tree: str | None = None
    """Another checkout (the code before a change)."""

    def __post_init__(self) -> None:
        problems = [] if self.requests >= 1 and self.rounds >= 1 else [
            f"requests and rounds must be >= 1, got {self.requests} and {self.rounds}"]
        if self.gap_ms < 0:
            problems.append(f"gap_ms must be >= 0, got {self.gap_ms}")
        raise_problems(problems, ValueError, "handler bench config")


def tree_rows(trees: dict[str, Path], runs: dict[str, list[list[list[float]]]], gaps: list[float]) -> dict[str, list]:
    """Per tree (its path) and gap: every request's summary, each round's p50, and the difference from this tree."""
    by_path: dict[str, list[list[list[float]]]] = {}
    for arm, tree in trees.items():  # the same tree given twice is one entry with every round of both
        by_path.setdefault(str(tree), []).extend(runs[arm])
    rows = {}
    for path, rounds in by_path.items():
        rows[path] = []
        for i, gap in enumerate(gaps):
            blocks = [np.asarray(r[i]) for r in rounds]
            cell = {"gap_ms": gap * 1000, **summarize(np.concatenate(blocks)),
                    "rounds_p50_ms": [summarize(b)["p50_ms"] for b in blocks]}
            if path != str(trees["this"]) and len(blocks) >= 2:
                cell.update(compare(str(trees["this"]), [np.asarray(r[i]) for r in by_path[str(trees["this"])]], blocks))
            rows[path].append(cell)
    return rows


def table(document: dict) -> str:
    """Markdown: per tree, p50 (microseconds) back to back and after the gap, each round's p50 in brackets."""
    def us(x: float) -> str:
        return f"{x * 1000:.1f}"

    def cell(c: dict) -> str:
        text = f"{us(c['p50_ms'])} [{', '.join(us(x) for x in c['rounds_p50_ms'])}]"
        if "diff_p50_ms" in c:
            d = c["diff_p50_ms"]
            text += f"; vs this tree {us(d['estimate'])} [{us(d['low'])}, {us(d['high'])}]"
        return text

    gap = document["config"]["gap_ms"]
    return markdown_table(["tree", "back to back: p50 us [per round]", f"after a {gap:g} ms idle gap: p50 us [per round]"],
                          [(Path(tree).name, cell(cells[0]), cell(cells[1])) for tree, cells in document["trees"].items()])


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(HandlerBenchConfig, argv, "python -m serving.handler_bench", __doc__.split("\n\n")[0])
    run = BenchRun("handler", "The router app's infer path, in process", cfg)
    trees = {"this": ROOT, **({"compare": Path(cfg.compare_tree).resolve()} if cfg.compare_tree else {})}
    gaps = [0.0, cfg.gap_ms / 1000]
    runs = run_phases({arm: (lambda _, tree=tree: run_tree(tree, cfg.requests, gaps)) for arm, tree in trees.items()},
                      cfg.rounds, mirror=True)
    rows = tree_rows(trees, runs, gaps)
    cdfs = {f"latency_cdf_gap_{g * 1000:g}ms": {Path(t).name + ("" if a == "this" else f" ({a})"):
                                                 np.concatenate([r[i] for r in runs[a]]) for a, t in trees.items()}
            for i, g in enumerate(gaps)}
    report = run.write({"what": "router app, POST infer, canned upstream; milliseconds per request", "trees": rows},
                       table, cdfs)
    print(table(report.data))
    print(f"\nwritten: {report.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
