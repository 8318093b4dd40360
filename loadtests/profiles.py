"""Users over time for the load shapes in ``loadtests.shapes``: plain functions, no Locust import."""

from __future__ import annotations

import math


def steps_profile(t: float, users: int, run_time: float, steps: int) -> int | None:
    """Users at second ``t``: ``users * k / steps`` during the k-th of ``steps`` equal slices; None after the end."""
    if t >= run_time:
        return None
    k = min(int(t / (run_time / steps)) + 1, steps)
    return max(1, math.ceil(users * k / steps))


def spike_profile(t: float, users: int, run_time: float, multiplier: float, start: float, length: float) -> int | None:
    """Users at second ``t``: ``users``, or ``users * multiplier`` inside the spike window; None after the end."""
    if t >= run_time:
        return None
    inside = round(start * run_time, 6) <= t < round((start + length) * run_time, 6)
    return max(1, math.ceil(users * multiplier)) if inside else users
