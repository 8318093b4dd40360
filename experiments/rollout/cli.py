"""``python -m serving rollout --experiment FILE [--steps 1,5,25,50,100] [--store URL]``.

The flags mirror ``RolloutArgs`` (via ``tunestack.cli``); the margins, minimum samples and timeouts come
from the experiment file's ``rollout:`` section (``RolloutConfig``). The store URL is resolved as the
router resolves it, with the environment read here, once. Exit status: 0 complete, 1 rolled back, held,
halted (a sample-ratio mismatch) or stopped, 2 bad input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

from experiments.errors import ExperimentError
from experiments.rollout.config import RolloutArgs, RolloutConfig, RolloutConfigError
from experiments.rollout.controller import Outcome, RolloutController
from experiments.rollout.rollout_report import report_folder, write_report
from experiments.spec import load_experiment
from experiments.store import STORE_ENV, audit_entry, default_store_url, open_store
from tunestack.cli import parse_dataclass
from tunestack.configfile import ConfigFileError, load_config_file


def load_rollout(args: RolloutArgs) -> tuple[str, RolloutConfig]:
    """The experiment's name and its ``rollout:`` section, with ``--steps`` applied; raises ``ValueError``."""
    exp = load_experiment(args.experiment)
    section = load_config_file(args.experiment).get("rollout")
    cfg = RolloutConfig.from_dict(section, f"{args.experiment}: rollout")
    if args.steps:
        try:
            steps = tuple(float(s) for s in args.steps)
        except ValueError:
            raise RolloutConfigError(f"--steps {','.join(args.steps)}: expected percentages such as 1,5,25,50,100") \
                from None
        cfg = dataclasses.replace(cfg, steps=steps)
    return exp.name, cfg


def store_url(args: RolloutArgs, env_url: str | None) -> str:
    """--store, else the environment's, else the experiment file's ``store``, else the default beside the file."""
    return args.store or env_url or load_experiment(args.experiment).store or default_store_url(args.experiment)


async def _run(url: str, name: str, cfg: RolloutConfig, who: str) -> tuple[Outcome, list[dict]]:
    async with open_store(url) as store:
        out = await RolloutController(store, name, cfg, who).run()
        return out, [audit_entry(r) for r in await store.revisions(name, 1000)]


def run_rollout(args: RolloutArgs, env_url: str | None = None) -> tuple[Outcome, Path]:
    """Run the rollout to its end and write its report; return the outcome and the report's Markdown file."""
    name, cfg = load_rollout(args)
    url = store_url(args, env_url)
    out, audit = asyncio.run(_run(url, name, cfg, args.who))
    folder = report_folder(args.out_dir)
    return out, write_report(folder, out, audit, {**cfg.to_dict(), "store": url.split("@")[-1],
                                                  "experiment_file": args.experiment})


def main(argv: list[str]) -> int:
    """``argv[0]`` is ``rollout``."""
    from tunestack.logs import setup_logging

    args = parse_dataclass(RolloutArgs, argv[1:], prog="python -m serving rollout")
    try:
        load_rollout(args)
    except (ExperimentError, ConfigFileError, RolloutConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging(Path(args.out_dir) / "rollout.log")
    try:
        out, md = run_rollout(args, os.environ.get(STORE_ENV))
    except (LookupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"report: {md.parent}", flush=True)
    while args.stay:  # a Deployment's pod: stay up, finished, until SIGTERM
        time.sleep(3600)
    return 0 if out.result == "complete" else 1
