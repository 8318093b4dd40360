"""tunestack.cli and tunestack.configfile: one dataclass -> CLI helper, one config-file loader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tunestack.cli import dataclass_parser, field_docs, parse_dataclass
from tunestack.configfile import ConfigFileError, load_config_file


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
