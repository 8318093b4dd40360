"""``python -m serving COMMAND ...``: one entry point for the serving stage's commands, declared once."""

from __future__ import annotations

import sys

from tunestack.cli import Command, Commands


def _rollout(argv: list[str]) -> int:
    from serving.rollout.cli import main

    return main(["rollout", *argv])  # its main takes the command's own name first


JUDGE = Commands("python -m serving judge", "The anytime-valid judge's proof by simulation.", {
    "simulate": Command("serving.judge.cli:run_simulate",
                        "simulate A/A and A/B experiments read at every look; false-verdict rates and power"),
})

COMMANDS = Commands("python -m serving", "The serving stage: Triton, the A/B router and what runs beside them.", {
    "triton": Command("serving.triton_cli:run_triton", "start a Triton Inference Server on the model repository"),
    "models": Command("serving.triton_cli:run_models",
                      "list / load / unload / rollback model versions on a running Triton"),
    "router": Command("serving.router.cli:run_router", "run the A/B router in front of Triton"),
    "report": Command("serving.router.cli:run_report",
                      "print an experiment's statistical report from a running router"),
    "judge": Command(JUDGE, "simulate A/A and A/B experiments read at every look: the anytime-valid judge"),
    "audit": Command("serving.router.store.cli:run_audit",
                     "print an experiment's weight changes (who, when, why) from its store"),
    "rollout": Command(_rollout, "ramp a treatment through the experiment store; promote or roll back on the judge"),
    "tune": Command("serving.tune.cli:main",
                    "search serving configs on the real tritonserver; publish the winner as a new version"),
})


def main(argv: list[str] | None = None) -> int:
    return COMMANDS(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
