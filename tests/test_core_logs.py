"""tunestack.logs: the pipeline's progress on the terminal, library noise (and Python warnings) in the log file."""

from __future__ import annotations

import logging
import warnings

import pytest

from tunestack.logs import setup_logging


@pytest.fixture
def restore_logging():
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    hf_logging.disable_propagation()
    hf_logging.enable_default_handler()


def test_progress_on_the_terminal_noise_in_the_file(tmp_path, capsys, restore_logging):
    log_file = setup_logging(tmp_path / "run" / "demo.log")
    logging.getLogger("workflows.demo").info("[1/5] training")
    logging.getLogger("transformers.modeling_utils").warning("Some weights were newly initialized")
    warnings.warn("Converting a tensor to a Python boolean", RuntimeWarning, stacklevel=1)
    logging.getLogger("urllib3.connectionpool").error("a library's error still shows")
    for handler in logging.getLogger().handlers:
        handler.flush()
    terminal = capsys.readouterr().err
    assert "[1/5] training" in terminal and "a library's error still shows" in terminal
    assert "newly initialized" not in terminal and "Python boolean" not in terminal
    text = log_file.read_text()
    assert all(s in text for s in ("[1/5] training", "newly initialized", "Python boolean"))
