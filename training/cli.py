"""The stages' command lines on ``tunestack.cli``, and config dict round-trips.

``parse_config`` builds the flags from a config dataclass (help from its attribute docstrings,
``--config FILE`` with the same keys, flags override the file); the config's own validation errors
are left to the caller's ``main``, which prints them without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tunestack.cli import parse_dataclass


def parse_config(cls: type, argv: list[str] | None, prog: str, description: str):
    """Parse ``argv`` into an instance of ``cls`` (``cls.from_dict`` validates); its errors propagate."""
    return parse_dataclass(cls, argv, prog, description, errors=())


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
