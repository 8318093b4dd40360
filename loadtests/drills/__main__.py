"""``python -m loadtests.drills rollout|fault``: run a drill and print its report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loadtests.drills import DrillConfig, fault_drill, rollout_drill


def main(argv: list[str] | None = None) -> int:
    from training.cli import build_parser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    parser = argparse.ArgumentParser(prog="python -m loadtests.drills", description="Operational drills under continuous Locust load (see loadtests/drills/__init__.py).")
    parser.add_argument("drill", choices=["rollout", "fault"], help="which drill to run")
    known, rest = parser.parse_known_args(argv)
    options = vars(build_parser(DrillConfig, "python -m loadtests.drills DRILL", "drill settings").parse_args(rest))
    options.pop("config", None)
    cfg = DrillConfig(**options)
    summary = (rollout_drill if known.drill == "rollout" else fault_drill)(cfg)
    print((Path(summary["folder"]) / "drill.md").read_text())
    if known.drill == "rollout":
        return 0 if summary["failed_requests"] == 0 else 1
    ok = summary["malformed_all_4xx"] and summary["no_request_hung"] and summary["metrics"]["errors_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
