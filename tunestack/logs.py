"""Logging for a command a person runs: the pipeline's own progress on the terminal, library noise in a file.

    from tunestack.logs import setup_logging

    def main(argv):                                   # once per process, in its __main__
        log_file = setup_logging(folder / "demo.log")
        ...

On the terminal: INFO and up from the project's own packages (tunestack, training, export, experiments,
serving, loadtests, deploy, workflows), and errors from anyone. In ``log_file`` (when given): everything at INFO and up,
including what libraries log (transformers' "newly initialized" weights, ``torch_dtype`` deprecations)
and Python warnings (a TracerWarning from the ONNX export), which ``logging.captureWarnings`` routes
through logging. Without a file, library warnings still reach the terminal, as before.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

PROJECT_PACKAGES = frozenset({"tunestack", "training", "export", "experiments", "serving", "loadtests", "deploy",
                              "workflows", "__main__"})
"""Top-level logger names whose INFO records a person sees on the terminal."""
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("httpx", "httpcore", "urllib3", "matplotlib", "PIL")
"""Libraries that log a line per request or per font at INFO/DEBUG: WARNING and up only, even in the file."""


class _ProjectOrError(logging.Filter):
    """Passes the project's own records, and anyone's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in PROJECT_PACKAGES or record.levelno >= logging.ERROR


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> Path | None:
    """Configure the root logger for this process (replacing its handlers); return ``log_file``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(console)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    if log_file is None:
        return None
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(to_file)
    console.addFilter(_ProjectOrError())
    logging.captureWarnings(True)
    _route_transformers_logs()
    return log_file


def _route_transformers_logs() -> None:
    """transformers prints through its own stderr handler; send its records through the root logger instead."""
    if "transformers" not in sys.modules:
        try:
            import transformers  # noqa: F401  (the pipeline imports it anyway)
        except ImportError:
            return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
