"""``python -m loadtests COMMAND``: run a load test, (re)build a report, benchmark, or serve the baseline.

    python -m loadtests run --target router --users 20 --run-time 60s --workers 4
    python -m loadtests run --target triton --versions 1,2 --arrival-rate 50
    python -m loadtests report reports/loadtest-20260101-120000/locust
    python -m loadtests bench --run runs/demo
    python -m loadtests baseline --model runs/demo/merged --port 8090
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from loadtests.config import LoadTestConfig, LoadTestError, read_settings_file
from tunestack.cli import parse_dataclass

DEFAULT_SETTINGS = Path("pyproject.toml")
RUN_DESCRIPTION = ("Run Locust headless (closed or open loop, optional shape, 1 or N+1 processes) and write "
                   "reports/loadtest-TIMESTAMP/. Defaults come from --settings FILE: a pyproject.toml "
                   "([tool.locust]) or locust.conf, default ./pyproject.toml; the options below override it.")

BENCH_DESCRIPTION = ("Triton (published or tuned), the router, FastAPI + ORT, LitServe + ORT and a transformers-pipeline "
                     "service under the same Locust load, and the in-process limit; exact P50/P99, max throughput "
                     "under a P99 bound, server CPU; bench.md + bench.json with ratios.")


def parse_run(argv: list[str]) -> LoadTestConfig:
    """``run``'s options: the settings file's values, then ``--config FILE``, then the flags (the command line wins)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--settings", type=Path, default=None)
    known, rest = pre.parse_known_args(argv)
    settings = known.settings or (DEFAULT_SETTINGS if DEFAULT_SETTINGS.is_file() else None)
    defaults = {}
    if settings is not None:
        names = {f.name for f in fields(LoadTestConfig)}
        data = read_settings_file(settings)
        # Other Locust options in [tool.locust] (loglevel, ...) are Locust's business, not ours.
        defaults = LoadTestConfig.settings_values({k: v for k, v in data.items() if k.replace("-", "_") in names})
    return parse_dataclass(LoadTestConfig, rest, "python -m loadtests run", RUN_DESCRIPTION, errors=(LoadTestError,),
                           defaults=defaults)


def cmd_run(argv: list[str]) -> int:
    from loadtests.run import run_loadtest

    result = run_loadtest(parse_run(argv))
    print(result.report.read_text())
    print(f"\nreport: {result.report}\nfolder: {result.folder} (Locust CSV/HTML, plots, summary.json)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from loadtests.report import build_report

    path = build_report(args.prefix, args.out)
    print(path.read_text())
    print(f"\nreport: {path}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    from loadtests.bench import BenchConfig, run_bench

    result = run_bench(parse_dataclass(BenchConfig, argv, "python -m loadtests bench", BENCH_DESCRIPTION,
                                       errors=(LoadTestError,)))
    print(result.markdown.read_text())
    print(f"\nwritten: {result.markdown} and {result.json}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from loadtests.baseline import serve

    serve(args.model, host=args.host, port=args.port, threads=args.threads, name=args.name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run Locust headless against the router or Triton and write a report",
                         description=RUN_DESCRIPTION, add_help=False)
    run.add_argument("options", nargs=argparse.REMAINDER, help="see `python -m loadtests run --help`")
    report = sub.add_parser("report", help="build report.md + plots from Locust CSV output",
                            description="Turn Locust's CSV output (PREFIX_stats.csv, PREFIX_stats_history.csv, ...) "
                                        "into report.md, summary.json and PNG plots.")
    report.add_argument("prefix", type=Path, help="the --csv prefix, e.g. reports/loadtest-.../locust")
    report.add_argument("--out", type=Path, default=None, help="output folder (default: the prefix's folder)")
    report.set_defaults(func=cmd_report)
    bench = sub.add_parser("bench", help="in-process and served benchmarks side by side",
                           description=BENCH_DESCRIPTION, add_help=False)
    bench.add_argument("options", nargs=argparse.REMAINDER, help="see `python -m loadtests bench --help`")
    baseline = sub.add_parser("baseline", help="serve the merged torch model with a transformers pipeline (KServe v2)")
    baseline.add_argument("--model", type=Path, required=True, help="merged model folder, e.g. runs/demo/merged")
    baseline.add_argument("--host", default="127.0.0.1", help="address to bind")
    baseline.add_argument("--port", type=int, default=8090, help="port to bind")
    baseline.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    baseline.add_argument("--name", default="baseline", help="model name in the URL: /v2/models/NAME/infer")
    baseline.set_defaults(func=cmd_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if argv[:1] == ["run"]:  # its flags mirror LoadTestConfig (tunestack.cli)
            return cmd_run(argv[1:])
        if argv[:1] == ["bench"]:  # its flags mirror BenchConfig (tunestack.cli)
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    raise SystemExit(main())
