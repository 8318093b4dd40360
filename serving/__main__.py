"""``python -m serving COMMAND ...``: one entry point for the serving stage's commands."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "triton": ("serving.triton_cli", "start a Triton Inference Server on the model repository"),
    "models": ("serving.triton_cli", "list / load / unload / rollback model versions on a running Triton"),
    "router": ("serving.router.cli", "run the A/B router in front of Triton"),
    "report": ("serving.router.cli", "print an experiment's statistical report from a running router"),
    "judge": ("serving.judge.cli", "simulate A/A and A/B experiments read at every look: the anytime-valid judge"),
    "audit": ("serving.router.cli", "print an experiment's weight changes (who, when, why) from its store"),
    "rollout": ("serving.rollout.cli", "ramp a treatment through the experiment store; promote or roll back on the judge"),
    "tune": ("serving.tune.cli", "search serving configs on the real tritonserver; publish the winner as a new version"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: python -m serving COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        print("\nRun `python -m serving COMMAND --help` for a command's options.")
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"\nerror: unknown command {argv[0]!r}; expected one of: {', '.join(COMMANDS)}")
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
