"""``python -m serving judge simulate ...``: the judge's proof by simulation, as a command.

    python -m serving judge simulate --scenario aa --sims 1000 --look-every 50 --max-per-arm 5000 --json

prints one JSON line per scenario (``--scenario all``: every scenario); without ``--json``, a Markdown
table. Flags mirror ``SimulationSpec`` (plus ``alpha``/``tune_n`` of ``JudgeConfig``), built with
``tunestack.cli``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, fields

from tqdm import tqdm

from experiments.judge.config import JudgeConfig
from experiments.judge.simulate import SCENARIOS, SimulationSpec, simulate
from tunestack.cli import parse_dataclass


@dataclass(frozen=True)
class SimulateCommand(SimulationSpec):
    """Simulate experiments and read the anytime-valid judge (and the old fixed-horizon tests) at every look."""

    scenario: str = "aa"
    """One of: aa, p99, accuracy, errors, labels, or all."""
    alpha: float = 0.05
    """The judge's family-wise error rate over all metrics."""
    tune_n: int = 2000
    """Per-arm sample size at which the judge's intervals are tightest."""
    json: bool = False
    """Print one JSON line per scenario instead of a Markdown table."""

    def __post_init__(self) -> None:
        if self.scenario != "all":
            super().__post_init__()

    def specs(self) -> list[SimulationSpec]:
        keep = {f.name for f in fields(SimulationSpec)}
        base = {k: v for k, v in asdict(self).items() if k in keep}
        names = list(SCENARIOS) if self.scenario == "all" else [self.scenario]
        return [SimulationSpec(**{**base, "scenario": name}) for name in names]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def markdown_table(results: list[dict]) -> str:
    """The README's table: false-verdict rates and power, the judge beside the old tests."""
    lines = ["| scenario | judge: runs with a false verdict | judge: power | judge: median requests to detection "
             "| old tests: false, one look at n=500 | old tests: false, every look | old tests: power, every look |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        old = r.get("fixed_horizon", {})
        med = r.get("median_requests_to_detection")
        lines.append(f"| {r['description']} | {_pct(r['any_false_verdict_rate'])} | {_pct(r.get('power'))} | "
                     f"{'-' if med is None else f'{med:,.0f}'} | {_pct(old.get('one_look_any_false_rate'))} | "
                     f"{_pct(old.get('repeated_looks_any_false_rate'))} | {_pct(old.get('repeated_looks_power'))} |")
    return "\n".join(lines)


def run_simulate(argv: list[str]) -> int:
    cmd = parse_dataclass(SimulateCommand, argv, prog="python -m serving judge simulate")
    cfg = JudgeConfig(alpha=cmd.alpha, tune_n=cmd.tune_n)
    results = []
    for spec in cmd.specs():
        with tqdm(total=spec.sims, unit="experiment", desc=spec.scenario, disable=not sys.stderr.isatty(),
                  file=sys.stderr) as bar:
            result = simulate(spec, cfg, progress=bar.update)
        results.append(result)
        if cmd.json:
            print(json.dumps(result), flush=True)
    if not cmd.json:
        print(f"{cmd.sims} simulated experiments per scenario, a look every {cmd.look_every} requests per arm up "
              f"to {cmd.max_per_arm}; judge alpha {cmd.alpha} over all metrics\n")
        print(markdown_table(results))
    return 0


def main(argv: list[str]) -> int:
    """``argv[0]`` is ``judge``; ``argv[1]`` the subcommand (``simulate``)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rest = argv[1:]
    if not rest or rest[0] != "simulate":
        print("usage: python -m serving judge simulate [options]  (--help for the options)", file=sys.stderr)
        if rest and rest[0] not in {"-h", "--help"}:
            print(f"error: unknown judge command {rest[0]!r}; expected: simulate", file=sys.stderr)
            return 2
        return 0
    return run_simulate(rest[1:])
