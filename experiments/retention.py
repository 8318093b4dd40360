"""Inputs kept for retraining: the ``retain_inputs:`` section of an experiment file. Off by default.

    retain_inputs:
      fraction: 0.5          # keep the input texts of half the answers (chosen at random per request)
      retention_s: 604800    # delete each kept text 7 days after its answer

With it, the router keeps the input texts of a sample of its answers in the experiment store (table
``kept_inputs``: experiment, request id, arm, the texts, the answer's time), read off the request path by a
worker as the drift feed reads its sample, and deletes the rows older than ``retention_s`` several times per
that period. Nothing else about the caller is kept (no user id: the answers table keeps only its hash). Joined
to feedback on the request id, the kept texts are the retrain loop's new training data
(``experiments.store.loop_tables.labelled_inputs``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tunestack.configfile import load_config_file

SECTION = "retain_inputs"
"""The experiment file's key for this section."""


class RetentionError(ValueError):
    """An invalid ``retain_inputs:`` section (every problem listed)."""


@dataclass(frozen=True)
class RetainInputs:
    """Which answers' input texts the store keeps, and for how long."""

    fraction: float = 0.0
    """Share of answered requests whose texts are kept, in [0, 1]; 0 keeps none (the default)."""
    retention_s: float = 7 * 86400.0
    """Seconds a kept text stays in the store after its answer; then it is deleted."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.fraction, int | float) or not 0.0 <= self.fraction <= 1.0:
            problems.append(f"fraction={self.fraction!r}: expected a share in [0, 1] (0: keep no inputs)")
        if not isinstance(self.retention_s, int | float) or self.retention_s <= 0:
            problems.append(f"retention_s={self.retention_s!r}: expected seconds > 0 (604800: a week)")
        if problems:
            raise RetentionError(f"invalid {SECTION} section: " + "; ".join(problems))

    @property
    def enabled(self) -> bool:
        return self.fraction > 0

    @classmethod
    def from_dict(cls, data: Any) -> RetainInputs:
        """The section as parsed; None (absent) is off. Unknown keys and bad values are reported together."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise RetentionError(f"{SECTION}: expected a mapping with fraction and retention_s, got {data!r:.100}")
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise RetentionError(f"{SECTION}: unknown key(s) {sorted(set(data) - known)}; expected some of {sorted(known)}")
        return cls(**data)


def read_retention(experiment_file: str | Path) -> RetainInputs:
    """The ``retain_inputs:`` section of an experiment file (off when absent)."""
    return RetainInputs.from_dict(load_config_file(experiment_file).get(SECTION))
