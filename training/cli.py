"""Build an argparse CLI from a config dataclass, so the flags mirror the fields one to one.

Help text comes from the attribute docstrings in the dataclass source; ``--config FILE`` accepts a
YAML, TOML or JSON file with the same keys, and flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import yaml


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string right after ``name: type = default``) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of an annotation like ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _none_or(convert):
    def parse(text: str):
        return None if text.lower() in {"none", "null", ""} else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description
    )
    parser.add_argument("--config", type=Path, help="YAML, TOML or JSON file with the same keys as the flags")
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = docs.get(f.name, "").replace("%", "%%")
        if typing.get_origin(tp) is dict or tp is dict:
            continue  # free-form dicts come from the config file only
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
            continue
        if typing.get_origin(tp) is tuple or tp is tuple:
            convert = _csv
            shown = "None" if default is None else ",".join(map(str, default)) or "(none)"
        else:
            convert = tp if tp in (int, float, str, Path) else str
            shown = default
        if optional:
            convert = _none_or(convert)
        parser.add_argument(flag, dest=f.name, type=convert, default=argparse.SUPPRESS, metavar=f.name.upper(), help=f"{help_} (default: {str(shown).replace('%', '%%')})")
    return parser


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML/TOML/JSON config file into a dict, with a clear error for a bad one."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in {".toml"}:
        data = tomllib.loads(text)
    elif path.suffix in {".json"}:
        data = json.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_config(cls: type, argv: list[str] | None, prog: str, description: str):
    """Parse ``argv`` into an instance of ``cls``: config-file values first, then flags."""
    parser = build_parser(cls, prog, description)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    values = load_config_file(config_path) if config_path else {}
    values.update(args)
    if hasattr(cls, "from_dict"):
        return cls.from_dict(values)
    return cls(**values)


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
