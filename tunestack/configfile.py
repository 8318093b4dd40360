"""One loader for config files: YAML, TOML, JSON or a ``.conf`` file by the file's suffix, into a plain dict.

    from tunestack.configfile import load_config_file

    values = load_config_file("recipes/exp1.yaml")          # {"name": "exp1", "time_budget_s": 300, ...}
    locust = load_config_file("pyproject.toml", section="tool.locust")
    manifests = load_documents("k8s/router.yaml")            # every document of a multi-document YAML file

Every error is a ``ConfigFileError`` (a ``ValueError``) that names the file and says what was wrong:
a missing file, a syntax error (with the parser's line), or a top level that is not a mapping.
``normalize_keys=True`` turns ``time-budget-s`` into ``time_budget_s`` so a file may spell keys as the
flags do. A ``.conf`` file is read by the parser Locust itself uses for ``locust.conf`` (configargparse's:
``key = value`` lines, comments; ``[sections]`` ignored).
"""

from __future__ import annotations

import dataclasses
import io
import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

SUFFIXES = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON", ".conf": "CONF"}
"""File suffix -> format; any other suffix is read as YAML (which also reads JSON)."""


class ConfigFileError(ValueError):
    """A config file is missing, does not parse, or does not hold a mapping; the message names the file."""


def parse_text(text: str, fmt: str, source: str) -> Any:
    """``text`` parsed as ``fmt`` (YAML, TOML, JSON or CONF); ``source`` names it in errors."""
    import configargparse

    try:
        if fmt == "TOML":
            return tomllib.loads(text)
        if fmt == "JSON":
            return json.loads(text)
        if fmt == "CONF":
            return dict(configargparse.DefaultConfigFileParser().parse(io.StringIO(text)))
        return yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError,
            configargparse.ConfigFileParserException) as e:
        raise ConfigFileError(f"config file {source} is not valid {fmt}: {e}") from None


def _read(path: Path) -> str:
    if not path.is_file():
        raise ConfigFileError(f"config file {path} does not exist (expected a .yaml, .toml or .json file)")
    return path.read_text()


def load_config_file(path: str | Path, *, normalize_keys: bool = False, section: str | None = None,
                     fmt: str | None = None) -> dict[str, Any]:
    """The mapping a YAML/TOML/JSON/conf file holds (an empty file: ``{}``); ``section`` (dotted, e.g.
    ``tool.locust``): only that table of it (absent: ``{}``); ``fmt``: the format whatever the suffix."""
    path = Path(path)
    data = parse_text(_read(path), fmt or SUFFIXES.get(path.suffix.lower(), "YAML"), str(path))
    for key in section.split(".") if section else ():
        data = (data or {}).get(key) if isinstance(data, dict) else data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"{path} [{section}]" if section else str(path)
        raise ConfigFileError(f"config file {where} must hold a mapping of keys to values, got {type(data).__name__}")
    if normalize_keys:
        data = {str(key).replace("-", "_"): value for key, value in data.items()}
    return data


def load_documents(path: str | Path) -> list[Any]:
    """Every non-empty document of a (multi-document) YAML file, e.g. rendered Kubernetes manifests."""
    path = Path(path)
    try:
        return [doc for doc in yaml.safe_load_all(_read(path)) if doc]
    except yaml.YAMLError as e:
        raise ConfigFileError(f"config file {path} is not valid YAML: {e}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (paths as strings), for the resolved config file."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_from_dict(cls: type, data: dict[str, Any], error: type[Exception], stage: str) -> Any:
    """``cls(**data)``, refusing unknown keys with the list of the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {stage} config key(s) {unknown}; expected some of: {', '.join(sorted(known))}")
    return cls(**data)
