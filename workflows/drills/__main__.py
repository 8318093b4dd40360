"""``python -m workflows drill ramp|fault|rollout-good|rollout-bad|rollout-slow|drift|aa|loop|loop-poisoned [flags]``:
run a drill and print its report; exit 0 when the drill met its bar, 1 when it did not."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from tunestack.cli import Command, Commands, parse_dataclass
from tunestack.logs import setup_logging
from workflows.drills import DrillConfig, fault_drill, ramp_drill
from workflows.drills.aa import aa_drill
from workflows.drills.drift import drift_drill
from workflows.drills.progressive import EXPECTED, ROLLOUT_DRILLS, progressive_drill

DRILLS = ("ramp", "fault", *(f"rollout-{d}" for d in ROLLOUT_DRILLS), "drift", "aa", "loop", "loop-poisoned")


def parse_drill(drill: str, argv: list[str]) -> DrillConfig:
    """The drill's settings: ``DrillConfig``'s defaults, then ``--config FILE``, then the flags."""
    return parse_dataclass(DrillConfig, argv, prog=f"python -m workflows drill {drill}")


def run_drill(drill: str, argv: list[str]) -> int:
    cfg = parse_drill(drill, argv)
    setup_logging(Path(cfg.out_dir) / f"{drill}-drill.log")  # progress here; library warnings in the file
    if drill.startswith("rollout-"):
        summary = progressive_drill(cfg, drill.removeprefix("rollout-"))
        ok = summary["decision"] == EXPECTED[drill.removeprefix("rollout-")]
    elif drill.startswith("loop"):
        from workflows.drills.loop import loop_drill

        summary = loop_drill(cfg, poisoned=drill == "loop-poisoned")
        ok = summary["promoted"] != summary["poisoned"] and summary["failed_requests"] == 0
        print((Path(summary["folder"]) / "loop.md").read_text())
        return 0 if ok else 1
    elif drill == "aa":
        summary = aa_drill(cfg)
        ok = summary["passed"]
    elif drill == "drift":
        summary = drift_drill(cfg)
        ok = summary["detected_within_bound"] and not summary["false_alarm_in_domain"]
    elif drill == "ramp":
        summary = ramp_drill(cfg)
        ok = summary["failed_requests"] == 0
    else:
        summary = fault_drill(cfg)
        ok = summary["malformed_all_4xx"] and summary["no_request_hung"] and summary["metrics"]["errors_match"]
    print((Path(summary["folder"]) / "drill.md").read_text())
    return 0 if ok else 1


HELP = {"ramp": "publish, load, ramp 0 -> 10 -> 50 -> 100 %, unload the old version, under load",
        "fault": "kill and restart tritonserver under load; malformed requests under load",
        "drift": "half the traffic switches to news headlines; the drift gauges must show it",
        "aa": "both arms the same version, users that differ, a rollout: no false verdict at any look, promoted",
        "loop": "traffic shifts, feedback retrains, the offline gate and the judge promote the candidate",
        "loop-poisoned": "the loop drill with 30 % of the feedback's labels flipped: production still serves"}
COMMANDS = Commands("python -m workflows drill", "Operational drills under continuous Locust load "
                    "(see workflows/drills/__init__.py).",
                    {d: Command(partial(run_drill, d), HELP.get(d, f"the rollout controller under load: {d}"))
                     for d in DRILLS})


def main(argv: list[str] | None = None) -> int:
    return COMMANDS(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
