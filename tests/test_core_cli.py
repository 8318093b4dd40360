"""tunestack.cli and tunestack.configfile: one dataclass -> CLI helper with its subcommand table, one
config-file loader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from export.pipeline import ExportResult
from tunestack.cli import Command, Commands, dataclass_parser, field_docs, option, parse_dataclass, pop_flag
from tunestack.configfile import ConfigFileError, load_config_file, load_documents


@dataclass
class Demo:
    """A config to parse."""

    name: str = "demo"
    """Run name."""
    budget_s: float | None = None
    """Wall-clock budget in seconds."""
    modules: tuple[str, ...] = ()
    """Modules that get adapters."""
    folder: Path = Path("runs")
    """Where runs go."""
    overwrite: bool = False
    """Replace an existing run."""
    kind: Literal["fp32", "int8"] = "fp32"
    """Variant."""
    extra: dict = field(default_factory=dict)
    """Free-form settings (file only)."""

    def __post_init__(self) -> None:
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")


def test_field_docs_are_the_attribute_docstrings():
    assert field_docs(Demo)["budget_s"] == "Wall-clock budget in seconds."
    help_text = dataclass_parser(Demo, prog="demo").format_help()
    assert "--budget-s" in help_text and "Wall-clock budget in seconds." in help_text
    assert "--no-overwrite" in help_text and "--extra" not in help_text and "--config" in help_text


def test_flags_are_typed():
    cfg = parse_dataclass(Demo, ["--budget-s", "2.5", "--modules", "query, value", "--folder", "x",
                                 "--overwrite", "--kind", "int8"])
    assert cfg == Demo(budget_s=2.5, modules=("query", "value"), folder=Path("x"), overwrite=True, kind="int8")
    assert parse_dataclass(Demo, []) == Demo()
    assert parse_dataclass(Demo, ["--budget-s", "null", "--no-overwrite"]).budget_s is None


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_config_file_with_the_same_keys_and_flags_override_it(tmp_path, suffix):
    data = {"name": "from-file", "budget-s": 30.0, "modules": ["q", "v"], "extra": {"k": 1}}
    path = tmp_path / f"c{suffix}"
    if suffix == ".toml":
        path.write_text('name = "from-file"\nbudget-s = 30.0\nmodules = ["q", "v"]\n[extra]\nk = 1\n')
    else:
        path.write_text(json.dumps(data))  # JSON is YAML too
    cfg = parse_dataclass(Demo, ["--config", str(path), "--name", "from-flag"])
    assert (cfg.name, cfg.budget_s, cfg.modules, cfg.extra) == ("from-flag", 30.0, ("q", "v"), {"k": 1})


def test_errors_exit_2_with_a_message_not_a_traceback(tmp_path, capsys):
    cases = [["--kind", "fp16"], ["--budget-s", "-1"], ["--budget-s", "soon"], ["--config", str(tmp_path / "no.yaml")]]
    (tmp_path / "bad.yaml").write_text("nmae: x\n")
    cases.append(["--config", str(tmp_path / "bad.yaml")])
    expected = ["fp16", "budget_s must be > 0, got -1.0", "soon", "no.yaml does not exist", "unknown key(s) ['nmae']"]
    for argv, message in zip(cases, expected, strict=True):
        with pytest.raises(SystemExit) as exit_info:
            parse_dataclass(Demo, argv, prog="demo")
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_configfile_names_the_file(tmp_path):
    (tmp_path / "a.toml").write_text("x = [")
    (tmp_path / "b.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "c.yml").write_text("")
    with pytest.raises(ConfigFileError, match=r"a\.toml is not valid TOML"):
        load_config_file(tmp_path / "a.toml")
    with pytest.raises(ConfigFileError, match=r"b\.yaml must hold a mapping .* got list"):
        load_config_file(tmp_path / "b.yaml")
    assert load_config_file(tmp_path / "c.yml") == {}
    (tmp_path / "d.json").write_text('{"time-budget-s": 3}')
    assert load_config_file(tmp_path / "d.json", normalize_keys=True) == {"time_budget_s": 3}


def test_argv_none_reads_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["prog", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        parse_dataclass(Demo, None, prog="demo")
    assert exit_info.value.code == 0 and "--budget-s" in capsys.readouterr().out


def test_export_result_docstrings_sit_under_their_fields():
    docs = field_docs(ExportResult)
    assert docs["already_published"].startswith("Variants whose exact ONNX file")
    assert docs["triton_repository"].startswith("For an s3:// repository")


@dataclass
class Action:
    """A command with positional arguments and a repeatable flag."""

    action: Literal["list", "load"] = option(positional=True)
    """What to do."""
    model: str | None = option(None, positional=True)
    """The model."""
    versions: tuple[int, ...] = option((), flag="--version", repeat=True)
    """Versions to serve."""
    texts: tuple[str, ...] = ()
    """More texts."""


def test_positional_arguments_and_repeatable_flags():
    cfg = parse_dataclass(Action, ["load", "m", "--version", "1", "--version", "3,4"])
    assert cfg == Action("load", "m", (1, 3, 4))
    assert parse_dataclass(Action, ["list"]) == Action("list")
    assert "--version VERSIONS" in dataclass_parser(Action).format_help()


def test_pop_flag_takes_the_last_value_in_either_spelling():
    assert pop_flag(["--settings", "a", "--users", "3", "--settings=b", "x"], "--settings") == ("b", ["--users", "3", "x"])
    assert pop_flag(["--users", "3"], "--settings") == (None, ["--users", "3"])


def test_commands_run_the_named_subcommand_with_the_rest(capsys):
    calls = []
    inner = Commands("tool group", "A group.", {"go": Command(lambda argv: calls.append(("go", argv)) or 0, "go")})
    tool = Commands("tool", "A tool.", {"group": Command(inner, "a group"),
                                        "run": Command(lambda argv: calls.append(("run", argv)) or 3, "run it")})
    assert tool(["run", "--x", "1"]) == 3 and tool(["group", "go", "a"]) == 0
    assert calls == [("run", ["--x", "1"]), ("go", ["a"])]
    assert tool(["--help"]) == 0 and "run    run it" in capsys.readouterr().out
    assert tool(["walk"]) == 2 and "unknown command 'walk'; expected one of: group, run" in capsys.readouterr().err
    assert tool([]) == 2
    with_default = Commands("tool", "A tool.", {"run": Command(lambda argv: len(argv), "run")}, default="run")
    assert with_default(["--x", "1"]) == 2  # not a command's name: the whole line goes to the default


def test_configfile_sections_conf_files_and_documents(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.locust]\nusers = 3\n[tool.other]\nx = 1\n')
    assert load_config_file(tmp_path / "pyproject.toml", section="tool.locust") == {"users": 3}
    assert load_config_file(tmp_path / "pyproject.toml", section="tool.none") == {}
    (tmp_path / "locust.conf").write_text("# Locust's format\n[locust]\nusers = 4\nrun-time = 2m\n")
    assert load_config_file(tmp_path / "locust.conf") == {"users": "4", "run-time": "2m"}
    (tmp_path / "m.yaml").write_text("kind: A\n---\n---\nkind: B\n")
    assert load_documents(tmp_path / "m.yaml") == [{"kind": "A"}, {"kind": "B"}]
    (tmp_path / "bad.yaml").write_text("kind: [\n")
    with pytest.raises(ConfigFileError, match=r"bad\.yaml is not valid YAML"):
        load_documents(tmp_path / "bad.yaml")
