"""Who sends what: each user's own texts and how active each user is (plain functions, no Locust import).

Real users differ -- in what they write and how often they come -- and the judge's statistics must hold when
they do, so the load test can make its users differ (``LoadTestConfig.user_texts``, ``user_activity``):

* ``text_order`` and ``window_pick``: each user id draws only from its own window of the texts sorted by
  label, then length, placed by a hash of the id (the same in every Locust process and every run), so users
  differ in label mix and text length;
* ``zipf_weights``: cumulative weights ``k^-s`` of the ``k``-th user id, for ``random.choices``: a few heavy
  users send much of the traffic.

And whether a user stays with its arm (``StickyAccount``), for every workload.
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


NO_VARIANT = "(no variant)"
"""The row of an answer that names no variant (always a failure)."""
STICKY, VARIANT_SWITCH = "sticky", "variant switch"
"""The Locust row (type, name) counting users served by another variant than before."""


class StickyAccount:
    """The variant each user id was served by first, and what a switch is: counted in a ``sticky`` /
    ``variant switch`` row (expected after a weight change, a broken sticky assignment otherwise) or, with
    ``mode`` ``fail``, a failure of the request.

    Args:
        events: the Locust environment's events (the switch row is fired there).
        mode: ``count`` or ``fail`` (``LoadTestConfig.sticky_check``).
    """

    def __init__(self, events, mode: str) -> None:
        self.events, self.mode = events, mode
        self.variant_of: dict[str, str] = {}

    def check(self, user: str, variant: str, valid: bool = True) -> str | None:
        """None, or the failure a switch is in mode ``fail``; ``valid``: the answer passed its other checks (an
        invalid one only records the variant a new user was served by)."""
        before = self.variant_of.setdefault(user, variant)
        if not valid or before == variant:
            return None
        self.variant_of[user] = variant
        switch = f"user {user} was served by {before}, now by {variant}"
        if self.mode == "fail":
            return f"sticky assignment broken: {switch}"
        self.events.request.fire(request_type=STICKY, name=VARIANT_SWITCH, response_time=0, response_length=0,
                                 context={}, exception=None)
        return None
