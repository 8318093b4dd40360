"""``python -m workflows COMMAND ...``: what spans the stages, one entry point, declared once.

    python -m workflows demo --name demo --time-budget-s 180
    python -m workflows demo-llm --time-budget-s 150
    python -m workflows compare --time-budget-s 150 --methods lora,full
    python -m workflows tune --repository model_repository --model sentiment
    python -m workflows drill ramp|fault|rollout-good|rollout-bad|rollout-slow|drift --run runs/demo
    python -m workflows bench --run runs/demo
    python -m workflows retrain --experiment experiments/specs/sentiment-ab.yaml [--watch] [--trigger manual]
    python -m workflows docs-tables
"""

from __future__ import annotations

import logging
import sys

from tunestack.cli import Command, Commands, parse_dataclass

BENCH_DESCRIPTION = ("Triton (published or tuned), the router, FastAPI + ORT, LitServe + ORT and a transformers-pipeline "
                     "service under the same Locust load, and the in-process limit; exact P50/P99, max throughput "
                     "under a P99 bound, server CPU; bench.md + bench.json with ratios.")


def compare(argv: list[str]) -> int:
    from training.errors import TrainingError
    from workflows.compare.run import CompareConfig, run_compare

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_dataclass(CompareConfig, argv, "python -m workflows compare", errors=(TrainingError, ValueError, TypeError))
    try:
        folder = run_compare(cfg)
    except (TrainingError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((folder / "compare.md").read_text())
    print(f"report: {folder}")
    return 0


def bench(argv: list[str]) -> int:
    from loadtests.config import LoadTestError
    from workflows.peer_bench.run import BenchConfig, run_bench

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_dataclass(BenchConfig, argv, "python -m workflows bench", BENCH_DESCRIPTION, errors=(LoadTestError,))
        result = run_bench(cfg)
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.markdown.read_text())
    print(f"\nwritten: {result.folder} ({result.markdown.name}, {result.json.name})")
    return 0


def drill(argv: list[str]) -> int:
    from workflows.drills.__main__ import COMMANDS as DRILLS

    return DRILLS(argv)


COMMANDS = Commands("python -m workflows", "What spans the stages: the demo, comparisons, tuning, drills, the peer bench.", {
    "demo": Command("workflows.demo:main", "the whole pipeline on the bundled model and data: train, export, serve, load"),
    "demo-llm": Command("workflows.demo_llm:main", "the causal LM through the whole stack: fine-tune, export, serve "
                        "fp32 and int8 behind the router, stream under Locust"),
    "compare": Command(compare, "every fine-tuning method on the same split and budget, trained, exported and timed"),
    "tune": Command("workflows.tune.cli:main",
                    "search serving configs on the real tritonserver; publish the winner as a new version"),
    "drill": Command(drill, "an operational drill under Locust load (ramp, fault, rollout-good|bad|slow, drift)"),
    "bench": Command(bench, "Triton and the router beside FastAPI, LitServe, transformers and in-process, same load"),
    "retrain": Command("workflows.loop.run:main",
                       "the retrain loop: feedback -> data set -> fine-tune -> export -> offline gate -> canary"),
    "docs-tables": Command("workflows.docs_tables:main",
                           "render the docs' benchmark tables from the example report JSONs (docs/tables/)"),
})


def main(argv: list[str] | None = None) -> int:
    return COMMANDS(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
