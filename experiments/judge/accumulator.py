"""``Judge``: the in-memory accumulator -- samples in as requests are answered, a ``UnitTable`` out.

    from experiments.judge import Judge, JudgeConfig

    j = Judge(JudgeConfig(alpha=0.05), arms=("control", "int8"), weights={"control": 95, "int8": 5})
    j.answered("int8", latency_ms=4.2, label="positive", confidence=0.91, unit="user-17")
    j.failed("control", unit="user-3")                  # a server (5xx) error
    j.feedback("int8", correct=True, unit="user-17")    # period: the current one unless named
    j.weights_changed({"control": 75, "int8": 25})     # a new period (returns its id)
    j.report()                                          # Verdicts, any time (experiments.judge.judge)

A caller that numbers its own periods (the router: its store revision, or its in-memory counter) names them:
``Judge(..., period=1)``, ``weights_changed(weights, period=4)``, and ``answered``/``failed``/``feedback``
with ``period=`` the one in force when the request was assigned (a request in flight across a weight change
belongs to the period it started in).

One row per (served arm, assigned arm, period, unit) holds additive sums, so adding a sample is O(1) (a
dict look-up and a few additions). ``unit`` is the request's sticky key; ``None`` makes the request a unit
of its own, summed into one of ``units.PSEUDO_UNITS`` buckets in turn (independent requests grouped
together leave the variance over units unbiased). Latencies are kept per row as counts on the latency grid,
so the p99's tail count can be read for a threshold set later; the control's first answers set it
(``units.tail_threshold_ms``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from experiments.generation import GENERATION_FIELDS, GenerationSample, quality_sums, sample_sums
from experiments.judge.config import JudgeConfig
from experiments.judge.judge import Verdicts, judge
from experiments.judge.units import (
    LATENCY_CAP_MS,
    PSEUDO_UNITS,
    UnitTable,
    latency_bucket,
    tail_threshold_ms,
    weights_of,
)

_FIELDS = ("requests", "server_errors", "answered", "latency_sum", "latency_sq", "predictions", "confidence_n",
           "confidence_sum", "confidence_sq", "feedback_n", "feedback_correct")
(_REQ, _ERR, _ANS, _LAT, _LAT2, _PRED, _CN, _CS, _CS2, _FN, _FC) = range(len(_FIELDS))
_LABELS, _BUCKETS, _GEN = len(_FIELDS), len(_FIELDS) + 1, len(_FIELDS) + 2


_NO_GENERATION = (0.0,) * len(GENERATION_FIELDS)


def _add_generation(row: list, sums: tuple[float, ...]) -> None:
    if row[_GEN] is None:
        row[_GEN] = list(sums)
    else:
        gen = row[_GEN]
        for i, x in enumerate(sums):
            gen[i] += x


def _many(x) -> Sequence:
    return (x,) if isinstance(x, str | int | float) else tuple(x)


class Judge:
    """Feeds samples per arm, unit and period as they arrive and judges on demand (see the module docstring)."""

    def __init__(self, config: JudgeConfig | None = None, arms: Sequence[str] = ("control", "treatment"),
                 weights: Mapping[str, float] | None = None, period: int = 0):
        if len(arms) < 2 or len(set(arms)) != len(arms):
            raise ValueError(f"arms={list(arms)}: expected a control and at least one treatment, distinct names")
        self.config = config or JudgeConfig()
        self.arms = tuple(arms)
        self._index = {a: i for i, a in enumerate(self.arms)}
        self._periods: dict[int, dict[str, float]] = {}
        self._period = -1
        self.weights_changed(weights if weights is not None else {a: 1.0 for a in self.arms}, period)
        self._rows: dict[tuple, list] = {}
        self._free = itertools.count()
        self._needed = self.config.min_samples.latency_p99
        self._first_control: list[float] = []

    @property
    def period(self) -> int:
        """The current period (record it with an answer to name it in its feedback)."""
        return self._period

    def weights_changed(self, weights: Mapping[str, float], period: int | None = None) -> int:
        """Start a new period with these weights (any scale; an arm not named gets 0); returns its id:
        ``period`` when given (it must be later than the current one), else the current one + 1."""
        unknown = sorted(set(weights) - set(self.arms))
        bad = [f"{a}={w!r}" for a, w in weights.items() if not (isinstance(w, int | float) and w >= 0)]
        late = period is not None and period <= self._period
        if unknown or bad or late:
            raise ValueError(f"weights {dict(weights)}, period {period}: " + "; ".join(
                ([f"unknown arm(s) {unknown}, expected some of {list(self.arms)}"] if unknown else [])
                + ([f"{', '.join(bad)}: expected numbers >= 0"] if bad else [])
                + ([f"expected a period after the current one ({self._period})"] if late else [])))
        weights_of({0: weights}, self.arms)  # raises when no arm gets traffic
        self._period = self._period + 1 if period is None else int(period)
        self._periods[self._period] = {a: float(w) for a, w in weights.items()}
        return self._period

    def _period_of(self, period: int | None) -> int:
        if period is None:
            return self._period
        if period not in self._periods:
            raise ValueError(f"period={period!r}: expected one of the periods so far, {sorted(self._periods)}")
        return period

    def _arm(self, arm: str) -> int:
        try:
            return self._index[arm]
        except KeyError:
            raise KeyError(f"unknown arm {arm!r}; expected one of: {', '.join(self.arms)}") from None

    def _row(self, arm: str, assigned: str | None, unit: str | None, period: int) -> list:
        a = self._arm(arm)
        key = (a, a if assigned is None else self._arm(assigned), period,
               next(self._free) % PSEUDO_UNITS if unit is None else str(unit))
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [0, 0, 0, 0.0, 0.0, 0, 0, 0.0, 0.0, 0, 0, {}, {}, None]
        return row

    def answered(self, arm: str, latency_ms: float, label: str | Sequence[str] | None = None,
                 confidence: float | Sequence[float] | None = None, unit: str | None = None,
                 assigned: str | None = None, period: int | None = None,
                 generation: GenerationSample | None = None) -> None:
        """One answered request: its latency, its predicted label(s) and top-class probability(ies) when
        known, its sticky key (``unit``), the arm it was assigned to when a fallback served it, the period
        it was assigned in (default: the current one), and a generative answer's stream figures."""
        if not (isinstance(latency_ms, int | float) and math.isfinite(latency_ms) and latency_ms >= 0):
            raise ValueError(f"latency_ms={latency_ms!r}: expected a finite number >= 0")
        row = self._row(arm, assigned, unit, self._period_of(period))
        row[_REQ] += 1
        row[_ANS] += 1
        lat = min(latency_ms, LATENCY_CAP_MS)
        row[_LAT] += lat
        row[_LAT2] += lat * lat
        buckets = row[_BUCKETS]
        b = latency_bucket(latency_ms)
        buckets[b] = buckets.get(b, 0) + 1
        if len(self._first_control) < self._needed and arm == self.arms[0]:
            self._first_control.append(latency_ms)
        if label is not None:
            labels = row[_LABELS]
            for k in _many(label):
                labels[k] = labels.get(k, 0) + 1
                row[_PRED] += 1
        if confidence is not None:
            for c in _many(confidence):
                row[_CN] += 1
                row[_CS] += c
                row[_CS2] += c * c
        if generation is not None:
            _add_generation(row, sample_sums(generation))

    def failed(self, arm: str, server_error: bool = True, unit: str | None = None,
               assigned: str | None = None, period: int | None = None) -> None:
        """One failed request. Only server errors count: a client error is the caller's, not the arm's."""
        if server_error:
            row = self._row(arm, assigned, unit, self._period_of(period))
            row[_REQ] += 1
            row[_ERR] += 1

    def feedback(self, arm: str, correct: bool, unit: str | None = None, period: int | None = None,
                 assigned: str | None = None) -> None:
        """One feedback outcome for an answer this arm gave to ``unit`` in ``period`` (default: now)."""
        row = self._row(arm, assigned, unit, self._period_of(period))
        row[_FN] += 1
        row[_FC] += int(bool(correct))

    def quality(self, arm: str, score: float, unit: str | None = None, period: int | None = None,
                assigned: str | None = None) -> None:
        """One quality score in [0, 1] (a rating, or ROUGE-L against a reference) for a generative answer."""
        if not (isinstance(score, int | float) and 0.0 <= score <= 1.0):
            raise ValueError(f"score={score!r}: expected a number in [0, 1]")
        _add_generation(self._row(arm, assigned, unit, self._period_of(period)), quality_sums(float(score)))

    def tail_threshold_ms(self) -> float | None:
        """The tail threshold, once the control has ``min_samples.latency_p99`` answers."""
        return tail_threshold_ms(self._first_control, self.config.quantile, self._needed)

    def table(self) -> UnitTable:
        """The rows so far as the judge reads them."""
        keys, rows = list(self._rows), list(self._rows.values())
        ids: dict = {}
        unit = np.array([ids.setdefault(k[3], len(ids)) for k in keys], dtype=np.int64)
        cols = {f: np.array([r[i] for r in rows], dtype=np.float64) for i, f in enumerate(_FIELDS)}
        names = sorted({k for r in rows for k in r[_LABELS]})
        labels = {k: np.array([r[_LABELS].get(k, 0) for r in rows], dtype=np.float64) for k in names}
        threshold = self.tail_threshold_ms()
        tail = None
        if threshold is not None:
            edge = latency_bucket(threshold)
            tail = np.array([sum(c for b, c in r[_BUCKETS].items() if b > edge) for r in rows], dtype=np.float64)
        generation = {}
        if any(r[_GEN] is not None for r in rows):
            sums = np.array([r[_GEN] or _NO_GENERATION for r in rows], dtype=np.float64).reshape(len(rows), -1)
            generation = {f: sums[:, i] for i, f in enumerate(GENERATION_FIELDS)}
        return UnitTable(self.arms, dict(self._periods), generation=generation,
                         arm=np.array([k[0] for k in keys], dtype=np.int64),
                         assigned=np.array([k[1] for k in keys], dtype=np.int64),
                         period=np.array([k[2] for k in keys], dtype=np.int64), unit=unit,
                         keyed=np.array([isinstance(k[3], str) for k in keys], dtype=bool),
                         labels=labels, tail=tail, tail_threshold_ms=threshold, **cols)

    def report(self) -> Verdicts:
        """Every treatment against the control and the sample-ratio check, now (``experiments.judge.judge``)."""
        return judge(self.table(), self.config)
