"""Sticky, monotone assignment of requests to arms.

A key (a user id, say) is hashed together with the experiment name to a bucket ``u`` uniform in
[0, 1) (BLAKE2b, so the same in every process, on every machine, after every restart). The arms then
own parts of [0, 1):

* With ``n`` treatments (every arm after the first), [0, 1) is cut into ``n`` lanes of width ``1/n``.
  Treatment ``i`` owns the bottom ``share_i`` of lane ``i``: ``[(i-1)/n, (i-1)/n + share_i)``.
* The control (the first arm) owns the rest of every lane.

Two arms (``n = 1``): the treatment owns ``[0, q)`` and the control ``[q, 1)``. Ramping the treatment
from ``p`` to ``q > p`` moves exactly the keys with ``u`` in ``[p, q)`` -- a fraction ``q - p`` -- from
the control into the treatment, and none back. Ramping down reverses it.

More arms: a treatment's keys change only when its own share changes, and only between it and the
control: growing treatment ``i`` takes keys from the control part of lane ``i``; shrinking it gives
them back to the control. Other treatments keep every key. The price is that no treatment can exceed
``1/n`` of the traffic (validated in ``config.py``); adding or removing an arm re-cuts the lanes and
reshuffles keys, so that is a new experiment (give it a new name).

Requests without a key get a random bucket: the split still follows the weights, without stickiness.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import numpy as np

from experiments.spec import Experiment

_SCALE = float(1 << 64)


def bucket(experiment: str, key: str) -> float:
    """The key's bucket in [0, 1): deterministic in (experiment, key), uniform over keys."""
    digest = hashlib.blake2b(f"{experiment}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def buckets(experiment: str, keys: Sequence[str]) -> np.ndarray:
    """``bucket`` for many keys at once, as a float64 array."""
    return np.fromiter((bucket(experiment, k) for k in keys), dtype=np.float64, count=len(keys))


class Assigner:
    """Maps buckets to arms for one set of weights; build a new one when the weights change."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment.name
        self.arms: tuple[str, ...] = experiment.arm_names
        shares = experiment.shares
        self._treatment_shares = np.array([shares[a] for a in self.arms[1:]], dtype=np.float64)
        self._n = len(self.arms) - 1
        self._lane = 1.0 / self._n

    def arm_index(self, u: float) -> int:
        """Index into ``arms`` of the arm owning bucket ``u``."""
        lane = min(int(u * self._n), self._n - 1)
        offset = u - lane * self._lane
        return lane + 1 if offset < self._treatment_shares[lane] else 0

    def assign(self, key: str | None, rng: random.Random) -> str:
        """The arm for ``key``; a random bucket from ``rng`` when there is no key."""
        u = rng.random() if key is None else bucket(self.experiment, key)
        return self.arms[self.arm_index(u)]
