"""One way to build a command line: a config dataclass becomes its flags, a table of subcommands its dispatcher.

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
``option(...)`` makes a field positional, gives it another flag name, or lets its flag repeat.
``--config FILE`` reads a YAML, TOML or JSON file with the same keys (``tunestack.configfile``); flags
given on the command line override it. Bad input exits with status 2 and a one-line error, never a
traceback: so do the ``errors`` the dataclass raises (its ``__post_init__`` validation).

A command with subcommands (``python -m serving router|report|...``) declares them once, as ``Commands``:
each subcommand's function is imported only when it runs and parses the rest of the command line itself.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, ArgumentParser

from tunestack.configfile import ConfigFileError, load_config_file

CONFIG_FLAG = "--config"
HELP_FLAGS = frozenset({"-h", "--help"})


def option(default: Any = dataclasses.MISSING, *, positional: bool = False, flag: str | None = None,
           repeat: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with command-line settings: ``positional`` (``tuple[X, ...]``: any number of them,
    ``X | None``: an optional one), ``flag`` (another name than ``--field-name``), ``repeat`` (a
    ``tuple[X, ...]`` flag given several times: ``--version 1 --version 3``, as well as ``--version 1,3``).
    The help is still the field's attribute docstring; ``kwargs`` go to ``dataclasses.field``."""
    metadata = {"positional": positional, "flag": flag, "repeat": repeat, **kwargs.pop("metadata", {})}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


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


def _add_field(parser: ArgumentParser, f: dataclasses.Field, tp: Any, help_: str) -> None:
    """One field's flag (or positional argument) on ``parser``."""
    meta = f.metadata
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    scalar, listed = _optional_scalar(tp), _comma_list(tp)
    if meta.get("positional"):
        nargs = "*" if listed else "?" if scalar else None
        kind = (listed.item if listed else scalar) or tp
        parser.add_argument(f.name, type=kind, nargs=nargs, help=help_,
                            **({} if required and nargs is None else {"default": default_of(f)}))
        return
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    if tp is bool:
        parser.add_argument(flag, dest=f.name, action=ActionYesNo(no_prefix="no-"), default=default_of(f), help=help_)
    elif meta.get("repeat"):  # strings collected here, converted by _repeated
        parser.add_argument(flag, dest=f.name, action="append", default=None, required=required,
                            help=f"{help_} (repeatable)")
    else:
        kind = listed or (NoneOr(scalar) if scalar else tp)
        parser.add_argument(flag, dest=f.name, type=kind, help=help_, default=default_of(f), required=required)


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
        if f.name not in skip and not _is_dict(tp) and f.init:
            _add_field(parser, f, tp, docs.get(f.name, ""))
    return parser


def _as_tuples(cls: type, values: dict[str, Any]) -> None:
    """Repeatable flags (the strings each ``--flag`` gave) and positional lists -> the field's tuple; a repeatable
    flag not given keeps the field's default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values or not (f.metadata.get("repeat") or f.metadata.get("positional")):
            continue
        given, listed = values[f.name], _comma_list(hints[f.name])
        if f.metadata.get("repeat"):
            values[f.name] = default_of(f) if given is None else listed(",".join(map(str, given)))  # type: ignore[misc]
        elif listed is not None and isinstance(given, list):
            values[f.name] = tuple(given)


def pop_flag(argv: Sequence[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last one given) and ``argv`` without
    it, read before the full parse (a file whose values become the defaults)."""
    value, rest, args = None, [], list(argv)
    i = 0
    while i < len(args):
        if args[i] == flag and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if args[i].startswith(flag + "="):
            value = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return value, rest


def parse_dataclass(cls: type, argv: Sequence[str] | None, prog: str | None = None, description: str | None = None,
                    *, exclude: Iterable[str] = (), errors: tuple[type[Exception], ...] = (ValueError, TypeError),
                    make: Callable[[dict[str, Any]], Any] | None = None, defaults: dict[str, Any] | None = None,
                    config_file: bool = True) -> Any:
    """Parse ``argv`` (None: ``sys.argv[1:]``) into an instance of ``cls``: the dataclass's defaults, then
    ``defaults`` (typed values, e.g. from a settings file the caller read), then ``--config FILE`` (unless
    ``config_file`` is False), then the flags.

    ``make`` builds the instance from the values (default ``cls.from_dict`` if it has one, else ``cls(**values)``);
    an exception of a type in ``errors`` becomes a usage error (exit status 2, no traceback).
    """
    parser = dataclass_parser(cls, prog, description, exclude=exclude, config_file=config_file)
    argv = list(sys.argv[1:] if argv is None else argv)
    values: dict[str, Any] = dict(defaults or {})
    parser.set_defaults(**{k: v for k, v in values.items() if k in parser.get_defaults()})
    path = pop_flag(argv, CONFIG_FLAG)[0] if config_file else None
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
    _as_tuples(cls, values)
    make = make or getattr(cls, "from_dict", None) or (lambda data: cls(**data))
    try:
        return make(values)
    except errors as e:
        parser.error(str(e))


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: what runs it and its one-line help."""

    run: str | Callable[[list[str]], int] | Commands
    """``"package.module:function"`` (imported only when the command runs), a function, or a group of
    subcommands; a function takes the rest of the command line and returns the exit status."""
    help: str
    """One line for the usage listing."""


@dataclasses.dataclass(frozen=True)
class Commands:
    """A command's subcommands, declared once: ``Commands("python -m serving", "...", {"router": Command(...)})``
    is the whole dispatcher; calling it with the command line runs the subcommand it names."""

    prog: str
    """The command as a user types it (the usage line)."""
    description: str
    """What the command is for (the first line of its usage)."""
    commands: Mapping[str, Command]
    """Subcommand name -> what runs it."""
    default: str | None = None
    """The subcommand that runs when the first argument names none (it gets the whole command line, ``--help``
    included); None: that is a usage error."""

    def usage(self) -> str:
        width = max(map(len, self.commands))
        lines = [f"  {name:<{width}}  {c.help}" for name, c in self.commands.items()]
        return (f"usage: {self.prog} {{{','.join(self.commands)}}} [options]\n\n{self.description}\n\n"
                "commands:\n" + "\n".join(lines) + f"\n\nRun `{self.prog} COMMAND --help` for a command's options.")

    def __call__(self, argv: Sequence[str]) -> int:
        """Run the subcommand ``argv[0]`` names with the rest; usage on ``--help`` (0), on no or an unknown
        command (2)."""
        argv = list(argv)
        if argv and argv[0] in self.commands:
            return _resolve(self.commands[argv[0]].run)(argv[1:])
        if self.default is not None:
            return _resolve(self.commands[self.default].run)(argv)
        asked = bool(argv) and argv[0] in HELP_FLAGS
        print(self.usage(), file=sys.stdout if asked else sys.stderr)
        if argv and not asked:
            print(f"\nerror: unknown command {argv[0]!r}; expected one of: {', '.join(self.commands)}", file=sys.stderr)
        return 0 if asked else 2


def _resolve(run: str | Callable[[list[str]], int] | Commands) -> Callable[[list[str]], int]:
    if isinstance(run, str):
        module, _, function = run.partition(":")
        return getattr(importlib.import_module(module), function)
    return run
