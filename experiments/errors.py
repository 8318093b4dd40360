"""The experiments package's exception: an invalid experiment spec, with every problem found."""

from __future__ import annotations


class ExperimentError(ValueError):
    """An invalid experiment spec: carries every problem found, raised once after checking them all."""

    def __init__(self, problems: list[str], source: str = "experiment"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is invalid ({len(self.problems)} problem(s)):\n{lines}")
