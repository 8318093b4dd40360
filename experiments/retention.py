"""What the experiment store keeps, and for how long: two sections of an experiment file.

    retain_inputs:           # off by default
      fraction: 0.5          # keep the input texts of half the answers (chosen at random per request)
      retention_s: 604800    # delete each kept text 7 days after its answer
    look_retention:          # the defaults below apply when the section is absent
      every_look_s: 3600     # every look of the newest hour
      per_minute_s: 86400    # then one look a minute up to a day old
      max_age_s: null        # then one an hour; null: for the experiment's whole life

``retain_inputs``: the router keeps the input texts of a sample of its answers in the store (table
``kept_inputs``: experiment, request id, arm, the texts, the answer's time), read off the request path by a worker
as the drift feed reads its sample; the router's store sweep deletes the rows older than ``retention_s``. Nothing
else about the caller is kept (no user id: the answers table keeps only its hash). Joined to feedback on the
request id, the kept texts are the retrain loop's new training data
(``experiments.store.loop_tables.labelled_inputs``).

``look_retention``: the judge's history of looks (``judge_looks``, one look per ``--look-interval-s``, about
12 MB a day at 5 s) is thinned by age, not cut off: the page draws the bands from the experiment's first look
to now, so old looks are kept, only fewer of them. With the defaults an experiment keeps about 720 + 1,380
looks plus 24 a day (a 30-day experiment: ~2,800 rows, about 1 MB), and the page's newest 5,000 reach back
about 120 days. ``experiments.store.looks.looks_to_drop`` decides which rows go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from tunestack.configfile import load_config_file

SECTION = "retain_inputs"
"""The experiment file's key for the kept inputs."""
LOOKS_SECTION = "look_retention"
"""The experiment file's key for the history of looks."""
MINUTE_S = 60.0
"""The spacing of the thinned looks between ``every_look_s`` and ``per_minute_s`` old."""
HOUR_S = 3600.0
"""The spacing of the looks older than ``per_minute_s``."""


class RetentionError(ValueError):
    """An invalid ``retain_inputs:`` or ``look_retention:`` section (every problem listed)."""


@dataclass(frozen=True)
class RetainInputs:
    """Which answers' input texts the store keeps, and for how long."""

    fraction: float = 0.0
    """Share of answered requests whose texts are kept, in [0, 1]; 0 keeps none (the default)."""
    retention_s: float = 7 * 86400.0
    """Seconds a kept text stays in the store after its answer; then it is deleted."""

    def __post_init__(self) -> None:
        problems = []
        if not _is_number(self.fraction) or not 0.0 <= self.fraction <= 1.0:
            problems.append(f"fraction={self.fraction!r}: expected a share in [0, 1] (0: keep no inputs)")
        if not _is_number(self.retention_s) or self.retention_s <= 0:
            problems.append(f"retention_s={self.retention_s!r}: expected seconds > 0 (604800: a week)")
        _raise(SECTION, problems)

    @property
    def enabled(self) -> bool:
        return self.fraction > 0

    @classmethod
    def from_dict(cls, data: Any) -> RetainInputs:
        """The section as parsed; None (absent) is off. Unknown keys and bad values are reported together."""
        return _from_dict(cls, SECTION, data)


@dataclass(frozen=True)
class LookRetention:
    """How the store thins the judge's history of looks as it ages (the live page's bands)."""

    every_look_s: float = HOUR_S
    """Looks younger than this many seconds are all kept (3600: the newest hour at full resolution)."""
    per_minute_s: float = 86400.0
    """Looks between ``every_look_s`` and this many seconds old are thinned to one a minute (the first of
    each minute); older ones to one an hour (the first of each hour)."""
    max_age_s: float | None = None
    """Looks older than this many seconds are deleted; None (the default) keeps the hourly ones for the
    experiment's whole life (24 rows a day)."""

    def __post_init__(self) -> None:
        problems = []
        if not _is_number(self.every_look_s) or self.every_look_s < 0:
            problems.append(f"every_look_s={self.every_look_s!r}: expected seconds >= 0 (3600: the newest hour)")
        if not _is_number(self.per_minute_s) or (_is_number(self.every_look_s) and self.per_minute_s < self.every_look_s):
            problems.append(f"per_minute_s={self.per_minute_s!r}: expected seconds >= every_look_s "
                            f"({self.every_look_s!r}; 86400: a day)")
        if self.max_age_s is not None and (not _is_number(self.max_age_s) or self.max_age_s <= 0):
            problems.append(f"max_age_s={self.max_age_s!r}: expected seconds > 0, or null to keep the hourly looks")
        _raise(LOOKS_SECTION, problems)

    def spacing(self, at: float, now: float) -> float | None:
        """The spacing kept at ``now`` for a look taken at ``at``: 0 (every look), ``MINUTE_S``, ``HOUR_S``, or
        None (deleted). A look younger than ``every_look_s`` keeps every look; older ones are judged by their
        clock minute's start (the whole minute moves to hourly at once) and deleted when the start of their
        minute or hour is older than ``max_age_s``: a thinned bucket ages as one, so thinning often or
        seldom leaves the same looks."""
        if now - at <= self.every_look_s:
            return 0.0 if self.max_age_s is None or now - at <= self.max_age_s else None
        spacing = MINUTE_S if now - _floor(at, MINUTE_S) <= self.per_minute_s else HOUR_S
        if self.max_age_s is not None and now - _floor(at, spacing) > self.max_age_s:
            return None
        return spacing

    @classmethod
    def from_dict(cls, data: Any) -> LookRetention:
        """The section as parsed; None (absent) is the defaults. Unknown keys and bad values are reported together."""
        return _from_dict(cls, LOOKS_SECTION, data)


def read_retention(experiment_file: str | Path) -> RetainInputs:
    """The ``retain_inputs:`` section of an experiment file (off when absent)."""
    return RetainInputs.from_dict(load_config_file(experiment_file).get(SECTION))


def read_look_retention(experiment_file: str | Path) -> LookRetention:
    """The ``look_retention:`` section of an experiment file (the defaults when absent)."""
    return LookRetention.from_dict(load_config_file(experiment_file).get(LOOKS_SECTION))


_Section = TypeVar("_Section", RetainInputs, LookRetention)


def _from_dict(cls: type[_Section], section: str, data: Any) -> _Section:
    if data is None:
        return cls()
    known = sorted(f.name for f in fields(cls))
    if not isinstance(data, dict):
        raise RetentionError(f"{section}: expected a mapping with some of {known}, got {data!r:.100}")
    if set(data) - set(known):
        raise RetentionError(f"{section}: unknown key(s) {sorted(set(data) - set(known))}; expected some of {known}")
    return cls(**data)


def _floor(at: float, spacing: float) -> float:
    """The start of the clock minute or hour (``spacing``) that ``at`` falls in."""
    return math.floor(at / spacing) * spacing


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _raise(section: str, problems: list[str]) -> None:
    if problems:
        raise RetentionError(f"invalid {section} section: " + "; ".join(problems))
