"""``python -m loadtests.drills``: a drill's settings from ``--config FILE`` and flags; unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.drills.__main__ import main, parse_drill


def test_drills_cli_reads_its_config_file(tmp_path):
    """The file's values are the defaults; a flag given on the command line overrides them."""
    config = tmp_path / "drill.yaml"
    config.write_text("rate: 7.5\nstep-s: 11\nrun: runs/other\n")
    cfg = parse_drill("fault", ["--config", str(config), "--step-s", "13"])
    assert (cfg.rate, cfg.step_s, cfg.run) == (7.5, 13.0, Path("runs/other"))  # the flag overrides the file


def test_drills_cli_refuses_unknown_config_keys(tmp_path, capsys):
    config = tmp_path / "drill.toml"
    config.write_text("rte = 7.5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["rollout", "--config", str(config)])
    assert exit_info.value.code == 2 and "unknown key(s) ['rte']" in capsys.readouterr().err


def test_drills_cli_names_every_drill_and_refuses_an_unknown_one(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"  {drill} " in usage for drill in ("rollout", "fault", "rollout-good", "rollout-bad", "rollout-slow", "drift"))
    assert main(["rolout"]) == 2
    assert "unknown command 'rolout'" in capsys.readouterr().err
