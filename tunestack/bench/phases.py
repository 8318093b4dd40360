"""How a benchmark takes its samples on a noisy machine: every option warmed up, then measured side by side.

    blocks = run_phases({"direct": direct, "router": routed}, phases=8, warmup=warm)
    # {"direct": [phase 0's result, phase 1's, ...], "router": [...]}

In each phase every option (an "arm") runs once, in turn, so a slow minute of the machine lands on all of
them alike instead of on whichever happened to run then; phase ``k`` of one arm is paired with phase ``k``
of another (``tunestack.bench.stats.compare``). ``mirror`` reverses the order in every other phase (A B,
B A, ...), so neither arm always runs right after the other. ``keep`` drops an arm from later phases
(a load level it can no longer sustain). A phase's result is whatever the arm returns: latencies
(``time_each``), a Locust run's figures, a subprocess's summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_phases(arms: Mapping[str, Callable[[int], T]], phases: int, *,
               warmup: Callable[[str], Any] | None = None, mirror: bool = False,
               keep: Callable[[str, T], bool] | None = None) -> dict[str, list[T]]:
    """``warmup(arm)`` for every arm (not measured), then ``phases`` phases, each calling ``arms[name](phase)``
    for every arm still in the run; the results by arm, in phase order."""
    if phases < 1:
        raise ValueError(f"phases must be >= 1, got {phases}")
    for name in arms if warmup else ():
        warmup(name)  # type: ignore[misc]
    results: dict[str, list[T]] = {name: [] for name in arms}
    running = list(arms)
    for phase in range(phases):
        order = running[::-1] if mirror and phase % 2 else list(running)
        log.debug("phase %d/%d: %s", phase + 1, phases, ", ".join(map(str, order)))
        for name in order:
            result = arms[name](phase)
            results[name].append(result)
            if keep is not None and not keep(name, result):
                running.remove(name)
    return results


def time_each(call: Callable[[T], Any], items: Iterable[T], per_item: Callable[[T], int] | None = None) -> np.ndarray:
    """Milliseconds of ``call(item)`` for each item, in order (divided by ``per_item(item)`` when given: the
    time per text of a batch)."""
    times = []
    for item in items:
        start = time.perf_counter()
        call(item)
        elapsed = (time.perf_counter() - start) * 1000
        times.append(elapsed / per_item(item) if per_item else elapsed)
    return np.asarray(times, dtype=np.float64)


def split(items: list[T], phases: int) -> list[list[T]]:
    """``items`` in ``phases`` consecutive, near-equal chunks: the share of each phase (the same items for every
    arm in the same phase, so the phases pair up)."""
    bounds = np.linspace(0, len(items), phases + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
