"""The history of looks: the judge's verdicts at past moments, so a person can watch each confidence sequence
narrow toward its verdict (the live page, ``serving.page``).

A look is a compact copy of ``Verdicts.to_dict()`` at one moment (``look_of``): per treatment and metric the
verdict, the CS of ``treatment - control`` and the two sample sizes; the sample-ratio check's verdict and
e-value. It is a few hundred bytes. The router takes one every ``RouterConfig.look_interval_s`` while traffic
flows and appends it to the experiment store's ``judge_looks`` table (``experiments.store.looks``), or, without
a store, to a bounded ring in its memory (``LookRing``). The CSs are valid at every look at once, so plotting
all of them shows nothing the judge did not promise: each band holds the true difference, at every moment.
"""

from __future__ import annotations

from collections import deque
from typing import Any

KEPT = ("verdict", "estimate", "low", "high", "n_control", "n_treatment")
"""What a look keeps of each metric (``MetricResult``'s fields of the same names)."""


def look_of(verdicts: dict[str, Any], at: float, period: int | None = None) -> dict[str, Any]:
    """A look from ``Verdicts.to_dict()`` taken at ``at`` (Unix time, seconds) in ``period``."""
    srm = verdicts["sample_ratio"]
    return {
        "at": round(at, 3),
        "period": period,
        "sample_ratio": {"verdict": srm["verdict"], "units_evalue": srm["units_evalue"],
                         "units_threshold": srm["units_threshold"]},
        "treatments": {t: {name: {k: m.get(k) for k in KEPT} for name, m in j["metrics"].items()}
                       for t, j in verdicts["treatments"].items()},
    }


def thin(looks: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """At most ``most`` looks, evenly spaced over the list, the first and the newest always kept."""
    if most < 2:
        raise ValueError(f"thin keeps at least 2 looks (the first and the newest), got most={most}")
    if len(looks) <= most:
        return list(looks)
    step = (len(looks) - 1) / (most - 1)
    return [looks[round(i * step)] for i in range(most)]


class LookRing:
    """The newest ``size`` looks in memory (a router without a store): oldest first, the oldest dropped."""

    def __init__(self, size: int):
        if size < 2:
            raise ValueError(f"a look ring keeps at least 2 looks, got size={size}")
        self._looks: deque[dict[str, Any]] = deque(maxlen=size)

    def append(self, look: dict[str, Any]) -> None:
        self._looks.append(look)

    def newest_at(self) -> float | None:
        """The time of the newest look (None: none yet)."""
        return self._looks[-1]["at"] if self._looks else None

    def looks(self) -> list[dict[str, Any]]:
        return list(self._looks)

    def __len__(self) -> int:
        return len(self._looks)
