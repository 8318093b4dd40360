"""One way to turn a config dataclass into a command line (built on jsonargparse).

    from dataclasses import dataclass
    from tunestack.cli import parse_dataclass

    @dataclass
    class BenchConfig:
        requests: int = 1000
        '''Requests per path.'''                 # <- the flag's help text

    cfg = parse_dataclass(BenchConfig, argv, prog="python -m mystage")   # --requests N, --config FILE

Each field becomes a flag (``time_budget_s`` -> ``--time-budget-s``) whose help is the field's attribute
docstring; types come from the annotations (``int | None`` takes ``none``, ``bool`` gives ``--x/--no-x``,
``tuple[str, ...]`` takes ``a,b``, ``Literal[...]`` gives choices); ``dict`` fields come from the file only.
``--config FILE`` reads a YAML, TOML or JSON file with the same keys (``tunestack.configfile``); flags
given on the command line override it. Bad input exits with status 2 and a one-line error, never a
traceback: so do the ``errors`` the dataclass raises (its ``__post_init__`` validation).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, ArgumentParser

from tunestack.configfile import ConfigFileError, load_config_file

CONFIG_FLAG = "--config"


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string right after ``name: type = default``) of a class and its bases;
    a field without one may carry its help as ``field(metadata={"help": ...})``."""
    docs: dict[str, str] = {f.name: f.metadata["help"].replace("%%", "%") for f in dataclasses.fields(cls)
                            if "help" in f.metadata}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


class CommaList:
    """The flag type of ``tuple[X, ...]`` fields (X: str, int, float): ``"a, b"`` (a flag) or ``["a", "b"]``
    (a file) -> ``("a", "b")``; with ``optional``, ``none`` -> None."""

    def __init__(self, item: type = str, optional: bool = False):
        self.item, self.optional = item, optional

    def __call__(self, value: Any) -> tuple | None:
        if self.optional and (value is None or (isinstance(value, str) and value.strip().lower() in NoneOr.NONE)):
            return None
        parts = value if isinstance(value, list | tuple) else [p.strip() for p in str(value).split(",") if p.strip()]
        return tuple(self.item(p) for p in parts)

    def __repr__(self) -> str:
        return f"comma-separated {self.item.__name__}s" + (" or none" if self.optional else "")


comma_list = CommaList()


class NoneOr:
    """The flag type of ``X | None`` fields (X: int, float, str, Path): ``none``, ``null`` or empty -> None."""

    NONE = frozenset({"none", "null", ""})

    def __init__(self, convert: type):
        self.convert = convert

    def __call__(self, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in self.NONE):
            return None
        return self.convert(value)

    def __repr__(self) -> str:
        return f"{self.convert.__name__} or none"


def _optional_scalar(tp: Any) -> type | None:
    """X for ``X | None`` with X a plain scalar type, else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and args[0] in (int, float, str, Path) else None


def _is_dict(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp is dict or typing.get_origin(tp) is dict or any(_is_dict(a) for a in args)


def _comma_list(tp: Any) -> CommaList | None:
    """The flag type for ``tuple[X, ...]`` (or ``tuple[X, ...] | None``), X a str, int or float; else None."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            return None
        tp, optional = args[0], True
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and (args == () or (len(args) == 2 and args[1] is Ellipsis)):
        item = args[0] if args else str
        return CommaList(item, optional) if item in (str, int, float) else None
    return None


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def dataclass_parser(cls: type, prog: str | None = None, description: str | None = None, *,
                     exclude: Iterable[str] = (), config_file: bool = True) -> ArgumentParser:
    """An ArgumentParser with one flag per field of ``cls`` (less ``exclude`` and ``dict`` fields)."""
    parser = ArgumentParser(prog=prog, description=description or inspect.getdoc(cls), exit_on_error=True)
    if config_file:
        parser.add_argument(CONFIG_FLAG, type=str, default=None,
                            help="YAML, TOML or JSON file with the same keys as the flags; flags override it")
    docs, hints, skip = field_docs(cls), typing.get_type_hints(cls), set(exclude)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in skip or _is_dict(tp) or not f.init:
            continue
        flag, help_ = "--" + f.name.replace("_", "-"), docs.get(f.name, "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=ActionYesNo(no_prefix="no-"), default=default_of(f),
                                help=help_)
        else:
            scalar = _optional_scalar(tp)
            kind = _comma_list(tp) or (NoneOr(scalar) if scalar else tp)
            parser.add_argument(flag, dest=f.name, type=kind, help=help_, default=default_of(f), required=required)
    return parser


def _config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config F`` or ``--config=F``), read before the full parse."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(CONFIG_FLAG, default=None)
    return pre.parse_known_args(argv)[0].config


def parse_dataclass(cls: type, argv: list[str] | None, prog: str | None = None, description: str | None = None, *,
                    exclude: Iterable[str] = (), errors: tuple[type[Exception], ...] = (ValueError, TypeError),
                    make: Callable[[dict[str, Any]], Any] | None = None,
                    defaults: dict[str, Any] | None = None) -> Any:
    """Parse ``argv`` (None: ``sys.argv[1:]``) into an instance of ``cls``: the dataclass's defaults, then
    ``defaults`` (typed values, e.g. from a settings file the caller read), then ``--config FILE``, then the flags.

    ``make`` builds the instance from the values (default ``cls.from_dict`` if it has one, else ``cls(**values)``);
    an exception of a type in ``errors`` becomes a usage error (exit status 2, no traceback).
    """
    parser = dataclass_parser(cls, prog, description, exclude=exclude)
    argv = list(sys.argv[1:] if argv is None else argv)
    values: dict[str, Any] = dict(defaults or {})
    parser.set_defaults(**{k: v for k, v in values.items() if k in parser.get_defaults()})
    path = _config_path(argv)
    if path:
        try:
            values.update(load_config_file(path, normalize_keys=True))
        except ConfigFileError as e:
            parser.error(str(e))
        known = {f.name for f in dataclasses.fields(cls)} - set(exclude)
        unknown = sorted(set(values) - known)
        if unknown and make is None and not hasattr(cls, "from_dict"):  # from_dict reports them itself
            parser.error(f"config file {path}: unknown key(s) {unknown}; expected some of: {', '.join(sorted(known))}")
        flags = {k: v for k, v in values.items() if k in parser.get_defaults()}
        parser.set_defaults(**parser.parse_object(flags).as_dict())  # validated and converted like flags
    parsed = parser.parse_args(argv).as_dict()
    parsed.pop("config", None)
    values.update(parsed)
    make = make or getattr(cls, "from_dict", None) or (lambda data: cls(**data))
    try:
        return make(values)
    except errors as e:
        parser.error(str(e))


def dataclass_cli(cls: type, prog: str | None = None, description: str | None = None,
                  **kwargs: Any) -> Callable[[list[str] | None], Any]:
    """``parse_dataclass`` with the parser settings bound: ``parse = dataclass_cli(Cfg, "prog"); parse(argv)``."""
    return lambda argv: parse_dataclass(cls, argv, prog, description, **kwargs)


def parse_config(cls: type, argv: list[str] | None, prog: str, description: str):
    """Parse ``argv`` into an instance of ``cls`` (``cls.from_dict`` validates); its errors propagate."""
    return parse_dataclass(cls, argv, prog, description, errors=())
