"""Validation that collects every problem and raises once: the one way each stage's config reports them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def is_number(x: Any) -> bool:
    """A JSON/YAML number: int or float, not a bool."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def raise_problems(problems: Sequence[str], error: Callable[[str], Exception], what: str) -> None:
    """Raise ``error("invalid WHAT:\\n  - PROBLEM\\n  - ...")`` naming every problem, one a line; return if none.

    ``error`` is the stage's own exception class (``ConfigError``, ``TuneError``, ...), so callers still catch
    what they caught before.
    """
    if problems:
        raise error(f"invalid {what}:\n  - " + "\n  - ".join(problems))
