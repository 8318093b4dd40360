"""The bugs issue #11 found while reading, each pinned by a test."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.pipeline import ExportResult
from loadtests.drills.__main__ import parse_args
from serving.errors import TritonStartError
from serving.triton import TritonServer
from tunestack.cli import field_docs


def test_drills_cli_reads_its_config_file(tmp_path):
    """``python -m loadtests.drills`` used to drop ``--config``: the file's values were ignored."""
    config = tmp_path / "drill.yaml"
    config.write_text("rate: 7.5\nstep-s: 11\nrun: runs/other\n")
    drill, cfg = parse_args(["fault", "--config", str(config), "--step-s", "13"])
    assert drill == "fault"
    assert (cfg.rate, cfg.step_s, cfg.run) == (7.5, 13.0, Path("runs/other"))  # the flag overrides the file


def test_drills_cli_refuses_unknown_config_keys(tmp_path, capsys):
    config = tmp_path / "drill.toml"
    config.write_text("rte = 7.5\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["rollout", "--config", str(config)])
    assert exit_info.value.code == 2 and "unknown key(s) ['rte']" in capsys.readouterr().err


def test_triton_refuses_equal_explicit_ports_instead_of_looping(tmp_path):
    """Two equal explicit ports made the port picker loop forever; now a clear error names them."""
    with pytest.raises(TritonStartError, match="http_port=8000, grpc_port=8000 and metrics_port=0 must be distinct"):
        TritonServer(tmp_path, http_port=8000, grpc_port=8000)
    server = TritonServer(tmp_path, http_port=8000, grpc_port=8001)  # distinct explicit ports, a free third one
    assert (server.http_port, server.grpc_port) == (8000, 8001) and server.metrics_port not in (0, 8000, 8001)


def test_export_result_docstrings_sit_under_their_fields():
    docs = field_docs(ExportResult)
    assert docs["already_published"].startswith("Variants whose exact ONNX file")
    assert docs["triton_repository"].startswith("For an s3:// repository")
