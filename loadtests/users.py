"""Who sends what: each user's own texts and how active each user is (plain functions, no Locust import).

Real users differ -- in what they write and how often they come -- and the judge's statistics must hold when
they do, so the load test can make its users differ (``LoadTestConfig.user_texts``, ``user_activity``):

* ``text_order`` and ``window_pick``: each user id draws only from its own window of the texts sorted by
  label, then length, placed by a hash of the id (the same in every Locust process and every run), so users
  differ in label mix and text length;
* ``zipf_weights``: cumulative weights ``k^-s`` of the ``k``-th user id, for ``random.choices``: a few heavy
  users send much of the traffic.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Sequence


def text_order(texts: Sequence[str], labels: Sequence[str]) -> tuple[int, ...]:
    """The texts' indices sorted by label, then length (then index: a stable order)."""
    return tuple(sorted(range(len(texts)), key=lambda i: (labels[i], len(texts[i]), i)))


def window_pick(order: Sequence[int], window: int, user_id: str, rng: random.Random) -> int:
    """A text index from ``user_id``'s window: ``window`` consecutive entries of ``order`` starting where the
    hash of the id puts them (uniform over the ``len(order) - window + 1`` starts)."""
    u = int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big") / 2**64
    start = int(u * (len(order) - window + 1))
    return order[start + rng.randrange(window)]


def zipf_weights(population: int, s: float) -> list[float]:
    """Cumulative weights of user ids ``0 .. population - 1``, the ``k``-th (1-based) weighing ``k^-s``."""
    return list(itertools.accumulate((k + 1) ** -s for k in range(population)))
