"""The loop drill's traffic shift, built from the bundled reviews: a new way of saying the same thing.

Production was trained on its run's training split. The shifted traffic is the run's *validation* split
(reviews production never trained on, and not its held-out set, which stays the original task's yardstick),
rewritten in a made-up slang: the ``SLANG_WORDS`` words that carry the most polarity in the training split
(largest absolute smoothed log-odds between the labels times the square root of the count, among words seen
at least ``MIN_COUNT`` times and in at most ``MAX_SHARE`` of the reviews) are each replaced, wherever they
occur, by one of ``SLANG_PER_SIDE`` made-up words of their side (``slang_word``): every strongly positive word
becomes one of a few positive slang words, every strongly negative one one of a few negative ones, as slang
that says "fire" for anything good and "mid" for anything bad. Only reviews with at least one replacement are
kept. Production has never seen the new words, so it loses exactly the cues it leaned on; feedback on the
shifted traffic teaches them, and a few words used often are learnt from a few hundred labelled reviews
(150 distinct made-up words, one per polar word, are not: each is seen too rarely). The shifted reviews are
split (by a fixed seed) into the traffic Locust sends (``traffic``) and a set never sent (``test``) on which
both versions are measured afterwards. The traffic also carries up to ``TRAFFIC_FROM_TRAIN`` shifted reviews of
the training split (never the test part): production was trained on part of that split in the original
wording, yet loses the cues the slang replaces there too, and more distinct texts teach the candidate more.

Before the shift, Locust sends ``before``: up to ``BEFORE_SHIFT`` reviews of the training split in their own
wording, the traffic production was built for.

The poisoned variant flips the label of ``POISON_SHARE`` of the reviews of each part Locust sends (a fixed,
random 30 %): Locust then sends those wrong labels back as feedback.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from training.data import Example

SLANG_WORDS = 150
SLANG_PER_SIDE = 3
"""Made-up words per polarity side: the polar words of a side take them in turn."""
MIN_COUNT = 20
MAX_SHARE = 0.05
"""Words in more than this share of the reviews (and, the, ...) are never replaced."""
TRAFFIC_FROM_TRAIN = 2000
BEFORE_SHIFT = 2000
POISON_SHARE = 0.3
TEST_SHARE = 0.3
_WORD = re.compile(r"[a-z']+")
_SYLLABLES = ("zo", "ra", "ki", "mu", "ve", "lo", "ta", "xi", "pe", "nu")


def slang_word(i: int) -> str:
    """The ``i``-th made-up word (unique for i < 1000): three syllables and a trailing 'x'."""
    return _SYLLABLES[i % 10] + _SYLLABLES[(i // 10) % 10] + _SYLLABLES[(i // 100) % 10] + "x"


def polarity_words(examples: Sequence[Example], k: int = SLANG_WORDS,
                   min_count: int = MIN_COUNT) -> list[tuple[str, bool]]:
    """The ``k`` words with the largest absolute log-odds between the two labels (add-one smoothing) times the
    square root of their count (polar and frequent: the cues a classifier leans on most), each with its side:
    True when it leans to the second label (sorted labels: ``positive`` of negative/positive)."""
    labels = sorted({e.label for e in examples})
    if len(labels) != 2:
        raise ValueError(f"the shift needs two labels, found {labels}")
    counts = {label: Counter() for label in labels}
    for e in examples:
        counts[e.label].update(set(_WORD.findall(e.text.lower())))
    a, b = (counts[label] for label in labels)
    na, nb = sum(e.label == labels[0] for e in examples), sum(e.label == labels[1] for e in examples)
    scored = []
    for w in set(a) | set(b):
        if min_count <= a[w] + b[w] <= MAX_SHARE * len(examples) and len(w) > 2:
            log_odds = math.log((b[w] + 1) / (nb + 2)) - math.log((a[w] + 1) / (na + 2))
            scored.append((abs(log_odds) * math.sqrt(a[w] + b[w]), w, log_odds > 0))
    return [(w, side) for _, w, side in sorted(scored, reverse=True)[:k]]


def slang(words: Sequence[tuple[str, bool]], per_side: int = SLANG_PER_SIDE) -> dict[str, str]:
    """Each polar word -> one of ``per_side`` made-up words of its side, in turn (positive words take
    ``slang_word(0..per_side-1)``, negative ones ``slang_word(100..)``)."""
    taken = {True: 0, False: 0}
    out = {}
    for w, side in words:
        out[w] = slang_word((0 if side else 100) + taken[side] % per_side)
        taken[side] += 1
    return out


def rewrite(text: str, mapping: dict[str, str]) -> str:
    """``text`` with every whole word in ``mapping`` (any case) replaced by its made-up word."""
    return re.sub(r"[A-Za-z']+", lambda m: mapping.get(m.group(0).lower(), m.group(0)), text)


@dataclass(frozen=True)
class Shift:
    """The shifted reviews: what Locust sends (labels possibly poisoned), what is measured, how it was built."""

    traffic: list[Example]
    test: list[Example]
    mapping: dict[str, str]
    poisoned: int
    """How many labels were flipped, in ``before`` and ``traffic`` together."""
    before: list[Example]
    """What Locust sends before the shift: training reviews in their own wording."""


def build_shift(train: Sequence[Example], pool: Sequence[Example], poisoned: bool, seed: int = 0) -> Shift:
    """The shift (see the module docstring): polarity words from ``train``; the test part from ``pool``, the
    traffic from the rest of ``pool`` and from ``train``."""
    mapping = slang(polarity_words(train))
    by_text = {new: Example(new, e.label) for e in pool if (new := rewrite(e.text, mapping)) != e.text}
    shifted = list(by_text.values())  # each text once: a text in the test part is never sent
    rng = random.Random(seed)
    rng.shuffle(shifted)
    n_test = round(len(shifted) * TEST_SHARE)
    test, traffic = shifted[:n_test], shifted[n_test:]
    held_back = {e.text for e in test}
    more = [Example(new, e.label) for e in train if (new := rewrite(e.text, mapping)) != e.text and new not in held_back]
    rng.shuffle(more)
    traffic = traffic + more[:TRAFFIC_FROM_TRAIN]
    rng.shuffle(traffic)
    before = rng.sample(list(train), min(BEFORE_SHIFT, len(train)))
    flipped = 0
    if poisoned:
        labels = sorted({e.label for e in train})
        traffic, flipped_traffic = _poison(traffic, labels, rng)
        before, flipped_before = _poison(before, labels, rng)
        flipped = flipped_traffic + flipped_before
    return Shift(traffic, test, mapping, flipped, before)


def _poison(examples: list[Example], labels: list[str], rng: random.Random) -> tuple[list[Example], int]:
    """``examples`` with the label of ``POISON_SHARE`` of them (at random) flipped, and how many."""
    flip = set(rng.sample(range(len(examples)), round(len(examples) * POISON_SHARE)))
    return [Example(e.text, labels[1 - labels.index(e.label)]) if i in flip else e
            for i, e in enumerate(examples)], len(flip)
