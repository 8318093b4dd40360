"""``python -m loadtests COMMAND``: run a load test, (re)build a report, benchmark, or serve the baseline.

    python -m loadtests run --target router --users 20 --run-time 60s --workers 4
    python -m loadtests run --target triton --versions 1,2 --arrival-rate 50
    python -m loadtests report reports/loadtest-20260101-120000/locust
    python -m loadtests bench --run runs/demo
    python -m loadtests baseline --model runs/demo/merged --port 8090
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from loadtests.config import LoadTestConfig, LoadTestError, read_settings_file
from tunestack import names
from tunestack.cli import Command, Commands, option, parse_dataclass, pop_flag

DEFAULT_SETTINGS = Path("pyproject.toml")
SETTINGS_FLAG = "--settings"
RUN_DESCRIPTION = ("Run Locust headless (closed or open loop, optional shape, 1 or N+1 processes) and write "
                   "reports/loadtest-TIMESTAMP/. Defaults come from --settings FILE: a pyproject.toml "
                   "([tool.locust]) or locust.conf, default ./pyproject.toml; then --config FILE; the options "
                   "below override both.")

BENCH_DESCRIPTION = ("Triton (published or tuned), the router, FastAPI + ORT, LitServe + ORT and a transformers-pipeline "
                     "service under the same Locust load, and the in-process limit; exact P50/P99, max throughput "
                     "under a P99 bound, server CPU; bench.md + bench.json with ratios.")


def parse_run(argv: list[str]) -> LoadTestConfig:
    """``run``'s options: the settings file's values, then ``--config FILE``, then the flags (the command line wins)."""
    given, rest = pop_flag(argv, SETTINGS_FLAG)
    settings = Path(given) if given else (DEFAULT_SETTINGS if DEFAULT_SETTINGS.is_file() else None)
    defaults = {}
    if settings is not None:
        known = {f.name for f in fields(LoadTestConfig)}
        data = read_settings_file(settings)
        # Other Locust options in [tool.locust] (loglevel, ...) are Locust's business, not ours.
        defaults = LoadTestConfig.settings_values({k: v for k, v in data.items() if k.replace("-", "_") in known})
    return parse_dataclass(LoadTestConfig, rest, "python -m loadtests run", RUN_DESCRIPTION, errors=(LoadTestError,),
                           defaults=defaults)


def run(argv: list[str]) -> int:
    from loadtests.run import run_loadtest

    result = run_loadtest(parse_run(argv))
    print(result.report.read_text())
    print(f"\nreport: {result.report}\nfolder: {result.folder} (Locust CSV/HTML, plots, summary.json)")
    return 0


@dataclass
class ReportArgs:
    """Turn Locust's CSV output (PREFIX_stats.csv, PREFIX_stats_history.csv, ...) into report.md, summary.json and
    PNG plots."""

    prefix: Path = option(positional=True)
    """The --csv prefix, e.g. reports/loadtest-.../locust."""
    out: Path | None = None
    """Output folder (default: the prefix's folder)."""


def report(argv: list[str]) -> int:
    from loadtests.report import build_report

    args = parse_dataclass(ReportArgs, argv, prog="python -m loadtests report")
    path = build_report(args.prefix, args.out)
    print(path.read_text())
    print(f"\nreport: {path}")
    return 0


def bench(argv: list[str]) -> int:
    from loadtests.bench import BenchConfig, run_bench

    result = run_bench(parse_dataclass(BenchConfig, argv, "python -m loadtests bench", BENCH_DESCRIPTION,
                                       errors=(LoadTestError,)))
    print(result.markdown.read_text())
    print(f"\nwritten: {result.folder} ({result.markdown.name}, {result.json.name})")
    return 0


@dataclass
class BaselineArgs:
    """Serve the merged torch model with a transformers pipeline (KServe v2 JSON)."""

    model: Path
    """Merged model folder, e.g. runs/demo/merged."""
    host: str = names.HOST
    """Address to bind."""
    port: int = 8090
    """Port to bind."""
    threads: int = 2
    """torch intra-op threads."""
    name: str = "baseline"
    """Model name in the URL: /v2/models/NAME/infer."""


def baseline(argv: list[str]) -> int:
    from loadtests.baseline import serve

    args = parse_dataclass(BaselineArgs, argv, prog="python -m loadtests baseline")
    serve(args.model, host=args.host, port=args.port, threads=args.threads, name=args.name)
    return 0


COMMANDS = Commands("python -m loadtests", __doc__.split("\n\n")[0], {
    "run": Command(run, "run Locust headless against the router or Triton and write a report"),
    "report": Command(report, "build report.md + plots from Locust CSV output"),
    "bench": Command(bench, "in-process and served benchmarks side by side"),
    "baseline": Command(baseline, "serve the merged torch model with a transformers pipeline (KServe v2)"),
})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS(sys.argv[1:] if argv is None else argv)
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
