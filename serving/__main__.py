"""``python -m serving COMMAND ...``: one entry point for the serving stage's commands, declared once."""

from __future__ import annotations

import sys

from tunestack.cli import Command, Commands


def _rollout(argv: list[str]) -> int:
    from experiments.rollout.cli import main

    return main(["rollout", *argv])  # its main takes the command's own name first


JUDGE = Commands("python -m serving judge", "The anytime-valid judge's proof by simulation.", {
    "simulate": Command("experiments.judge.cli:run_simulate",
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
    "audit": Command("experiments.store.cli:run_audit",
                     "print an experiment's weight changes (who, when, why) from its store"),
    "page": Command("serving.page.server:run_page",
                    "serve the live experiment page from a store, read only, on 127.0.0.1 (no router needed)"),
    "rollout": Command(_rollout, "ramp a treatment through the experiment store; promote or roll back on the judge"),
})


def main(argv: list[str] | None = None) -> int:
    return COMMANDS(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
