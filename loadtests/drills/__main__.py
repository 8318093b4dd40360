"""``python -m loadtests.drills rollout|fault|rollout-good|rollout-bad|rollout-slow|drift [--config FILE] [flags]``: run a
drill and print its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtests.drills import DrillConfig, fault_drill, rollout_drill
from loadtests.drills.drift import drift_drill
from loadtests.drills.progressive import EXPECTED, ROLLOUT_DRILLS, progressive_drill
from tunestack.cli import parse_dataclass
from tunestack.logs import setup_logging

DRILLS = ("rollout", "fault", *(f"rollout-{d}" for d in ROLLOUT_DRILLS), "drift")


def parse_args(argv: list[str] | None) -> tuple[str, DrillConfig]:
    """The drill's name and its settings: ``DrillConfig``'s defaults, then ``--config FILE``, then the flags."""
    parser = argparse.ArgumentParser(prog="python -m loadtests.drills", add_help=False,
                                     description="Operational drills under continuous Locust load "
                                                 "(see loadtests/drills/__init__.py).")
    parser.add_argument("drill", choices=DRILLS, help="which drill to run")
    known, rest = parser.parse_known_args(argv)
    return known.drill, parse_dataclass(DrillConfig, rest, prog=f"python -m loadtests.drills {known.drill}")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m loadtests.drills {{{','.join(DRILLS)}}} [--config FILE] [flags]\n"
              "Run `python -m loadtests.drills rollout --help` for every setting.")
        return 0
    drill, cfg = parse_args(argv)
    setup_logging(Path(cfg.out_dir) / f"{drill}-drill.log")  # progress here; library warnings in the file
    if drill.startswith("rollout-"):
        summary = progressive_drill(cfg, drill.removeprefix("rollout-"))
        print((Path(summary["folder"]) / "drill.md").read_text())
        return 0 if summary["decision"] == EXPECTED[drill.removeprefix("rollout-")] else 1
    if drill == "drift":
        summary = drift_drill(cfg)
        print((Path(summary["folder"]) / "drill.md").read_text())
        return 0 if summary["detected_within_bound"] and not summary["false_alarm_in_domain"] else 1
    summary = (rollout_drill if drill == "rollout" else fault_drill)(cfg)
    print((Path(summary["folder"]) / "drill.md").read_text())
    if drill == "rollout":
        return 0 if summary["failed_requests"] == 0 else 1
    ok = summary["malformed_all_4xx"] and summary["no_request_hung"] and summary["metrics"]["errors_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
