"""``python -m serving judge simulate ...``: the judge's proof by simulation, as a command.

    python -m serving judge simulate --scenario aa-sticky --sims 1000 --workers 2 --json
    python -m serving judge simulate --scenario aa-sticky --grid sticky --workers 2     # the README's grid
    python -m serving judge simulate --scenario aa-sticky --users 500 --activity-index 1.1 --json

prints one JSON line per run (``--scenario all``: every scenario; ``--grid NAME``: the scenario under
every traffic setting of ``scenarios.GRIDS[NAME]``); without ``--json``, a Markdown table of the judge
(units) beside the naive request-level judgement. Flags mirror ``SimulationSpec`` (plus ``alpha``/``tune_n``
of ``JudgeConfig``), built with ``tunestack.cli``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, fields

from tqdm import tqdm

from experiments.judge.config import JudgeConfig
from experiments.judge.scenarios import GRIDS, SCENARIOS
from experiments.judge.simulate import SimulationSpec, simulate
from tunestack.cli import parse_dataclass


@dataclass(frozen=True)
class SimulateCommand(SimulationSpec):
    """Simulate experiments and read the anytime-valid judge (and the naive request-level one) at every look."""

    scenario: str = "aa"
    """One of scenarios.SCENARIOS, several separated by commas, or all."""
    grid: str | None = None
    """Run the scenario under every traffic setting of this grid (sticky, ramp); flags still override."""
    alpha: float = 0.05
    """The judge's family-wise error rate over all checks."""
    tune_n: int = 2000
    """Effective samples per arm at which the judge's intervals are tightest."""
    json: bool = False
    """Print one JSON line per run instead of a Markdown table."""

    def __post_init__(self) -> None:
        if self.grid is not None and self.grid not in GRIDS:
            raise ValueError(f"grid={self.grid!r}: expected one of {', '.join(GRIDS)}")
        for name in self.names():
            SimulationSpec(**{**self._base(), "scenario": name})  # validates each

    def names(self) -> list[str]:
        return list(SCENARIOS) if self.scenario == "all" else [s.strip() for s in self.scenario.split(",")]

    def _base(self) -> dict:
        keep = {f.name for f in fields(SimulationSpec)}
        return {k: v for k, v in asdict(self).items() if k in keep}

    def specs(self) -> list[tuple[str, SimulationSpec]]:
        """``(setting, spec)`` per run."""
        base = self._base()
        given = {k: v for k, v in base.items() if k in SimulationSpec.TRAFFIC and v is not None}
        settings = GRIDS[self.grid] if self.grid else (("", {}),)
        return [(label, SimulationSpec(**{**base, **setting, **given, "scenario": name}))
                for name in self.names() for label, setting in settings]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def markdown_table(results: list[dict]) -> str:
    """The README's table: the judge (units, periods) beside the naive request-level judgement."""
    lines = ["| scenario | setting | judge: runs with a false verdict | naive: runs with a false verdict "
             "| judge: power | naive: power | judge: median requests to detection | naive: median requests |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        nv = r["naive"]
        lines.append(f"| {r['description']} | {r.get('setting') or '-'} | {_pct(r['any_false_verdict_rate'])} | "
                     f"{_pct(nv['any_false_verdict_rate'])} | {_pct(r.get('power'))} | {_pct(nv.get('power'))} | "
                     f"{_n(r.get('median_requests_to_detection'))} | {_n(nv.get('median_requests_to_detection'))} |")
    return "\n".join(lines)


def run_simulate(argv: list[str]) -> int:
    cmd = parse_dataclass(SimulateCommand, argv, prog="python -m serving judge simulate")
    cfg = JudgeConfig(alpha=cmd.alpha, tune_n=cmd.tune_n)
    results = []
    for setting, spec in cmd.specs():
        with tqdm(total=spec.sims, unit="experiment", desc=spec.scenario, disable=not sys.stderr.isatty(),
                  file=sys.stderr) as bar:
            result = {"setting": setting, **simulate(spec, cfg, progress=bar.update)}
        results.append(result)
        if cmd.json:
            print(json.dumps(result), flush=True)
    if not cmd.json:
        print(f"{cmd.sims} simulated experiments per row, a look every {2 * cmd.look_every} requests up to "
              f"{2 * cmd.max_per_arm}; alpha {cmd.alpha} over all checks\n")
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
