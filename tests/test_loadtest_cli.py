"""``python -m loadtests``: its commands, ``run``'s settings file then its flags, bad values as usage errors."""

from __future__ import annotations

import pytest

from loadtests.__main__ import parse_run


def test_loadtest_run_settings_file_then_flags(tmp_path):
    conf = tmp_path / "locust.conf"
    conf.write_text("# Locust's own format\n[locust]\nusers = 4\nshape = steps\nrun-time = 2m\n")
    cfg = parse_run(["--settings", str(conf), "--users", "6", "--versions", "1,2"])
    assert (cfg.users, cfg.shape, cfg.run_time_s, cfg.versions) == (6, "steps", 120.0, "1,2")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.locust]\ntarget = "triton"\narrival-rate = 5\nloglevel = "INFO"\n')
    cfg = parse_run(["--settings", str(pyproject)])
    assert (cfg.target, cfg.arrival_rate, cfg.open_loop) == ("triton", 5.0, True)


def test_loadtest_run_bad_values_exit_2_with_the_problem(tmp_path, capsys):
    conf = tmp_path / "locust.conf"
    conf.write_text("users = 3\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_run(["--settings", str(conf), "--shape", "zigzag"])
    assert exit_info.value.code == 2
    assert "unknown shape 'zigzag'; expected one of: none, steps, spike" in capsys.readouterr().err


def test_loadtest_commands_are_declared_once(capsys):
    from loadtests.__main__ import main

    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"  {name} " in usage for name in ("run", "report", "bench", "baseline"))
    with pytest.raises(SystemExit) as exit_info:
        main(["report"])  # the Locust CSV prefix is required
    assert exit_info.value.code == 2 and "prefix" in capsys.readouterr().err
    assert main(["rnu"]) == 2 and "unknown command 'rnu'" in capsys.readouterr().err
