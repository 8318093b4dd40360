"""The loop drill's shift (workflows/drills/shift.py): polar words found with their side, collapsed onto a few
made-up words per side, reviews rewritten, split into traffic and test, and the poisoned variant's flips."""

from __future__ import annotations

from training.data import Example
from workflows.drills.shift import POISON_SHARE, build_shift, polarity_words, slang, slang_word

GOOD = tuple(f"good{c}" for c in "abcdefghijklmnop")
BAD = tuple(f"bad{c}" for c in "abcdefghijklmnop")


def _reviews() -> list[Example]:
    """800 reviews, each with one cue word of its label's side (each cue in 25, about 3 % of them)."""
    out = []
    for i in range(800):
        positive = i % 2 == 0
        cue = (GOOD if positive else BAD)[(i // 2) % 16]
        out.append(Example(f"a {cue} film with actors {i}", "positive" if positive else "negative"))
    return out


def test_polar_words_keep_their_side_and_share_a_few_slang_words():
    reviews = _reviews()
    words = dict(polarity_words(reviews, k=40, min_count=5))
    assert set(words) == set(GOOD) | set(BAD), "the cues, not the words every review has"
    assert all(words[w] for w in GOOD) and not any(words[w] for w in BAD), "each word's side: its label's"
    mapping = slang(list(words.items()), per_side=2)
    assert {mapping[w] for w in GOOD} == {slang_word(0), slang_word(1)}
    assert {mapping[w] for w in BAD} == {slang_word(100), slang_word(101)}


def test_the_shift_rewrites_splits_and_poisons():
    reviews = _reviews()
    clean = build_shift(reviews, reviews[:200] + reviews[:10], poisoned=False)
    assert len(clean.test) == 60, "30 % of the pool's distinct texts, from the pool only"
    assert not {e.text for e in clean.test} & {e.text for e in clean.traffic}, "the test part is never sent"
    assert len(clean.traffic) == 140 + 800 - 60, "the pool's rest and the training reviews not held back"
    assert all(e.text.split()[1] in {slang_word(i) for i in (0, 1, 2, 100, 101, 102)} for e in clean.traffic)
    assert all((e.label == "positive") == (e.text.split()[1] in {slang_word(i) for i in (0, 1, 2)})
               for e in clean.traffic + clean.test), "a review keeps its label; its slang word has its side"
    assert len(clean.before) == 800 and {e.text for e in clean.before} == {e.text for e in reviews}, \
        "before the shift: the training reviews in their own wording"
    bad = build_shift(reviews, reviews[:200] + reviews[:10], poisoned=True)
    flipped = sum(a.label != b.label for a, b in zip(clean.traffic, bad.traffic, strict=True))
    assert flipped == round(len(clean.traffic) * POISON_SHARE)
    flipped_before = sum(a.label != b.label for a, b in zip(clean.before, bad.before, strict=True))
    assert flipped_before == round(len(clean.before) * POISON_SHARE) and bad.poisoned == flipped + flipped_before
