"""Every metric's confidence sequence and verdict, and the sample-ratio check, for a batch of experiments.

``evaluate(frame, config)`` runs on a ``Frame`` of ``B`` experiments (arrays of shape ``(B,)`` out), so
``judge(table)`` (batch 1) and the simulation (thousands of runs) share every line. Each metric is a ratio
over units (``RATIOS``, compared by ``ratio.contrast``: within periods, combined, variance over units) with
an asymptotic CS at the Bonferroni level ``alpha / checks`` (``config.py``); the label distribution tests
every label's share at ``alpha / k`` (``k`` labels, or 1 test for two labels, whose shares move together);
the sample-ratio check is ``srm.py``'s two tests at half its level each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from experiments.judge import srm
from experiments.judge.config import HIGHER_IS_BETTER, JudgeConfig, metrics_of
from experiments.judge.frame import Frame
from experiments.judge.ratio import Contrast, contrast

NOT_ENOUGH, BETTER, WORSE, DIFFERENT, EQUIVALENT, UNDECIDED = range(6)
"""Verdict codes (arrays of them in the simulation); ``VERDICTS`` names them."""

VERDICTS = ("not enough evidence yet", "better", "worse", "different", "equivalent within margin", "no decision yet")
"""The verdict for each code, as reports print it."""

FALSE_IN_AA = (BETTER, WORSE, DIFFERENT)
"""The verdicts that are false when both arms are the same (A/A)."""

MISMATCH, NO_MISMATCH = "sample ratio mismatch", "no mismatch detected"
"""The sample-ratio check's verdicts."""

RATIOS = {"error_rate": ("server_errors", "requests", None),
          "latency_mean": ("latency_sum", "answered", "latency_sq"),
          "latency_p99": ("tail", "answered", None),
          "accuracy": ("feedback_correct", "feedback_n", None),
          "confidence_mean": ("confidence_sum", "confidence_n", "confidence_sq"),
          "ttft_mean": ("ttft_sum", "streams", "ttft_sq"),
          "itl_mean": ("itl_sum", "gaps", "itl_sq"),
          "output_tokens_mean": ("output_tokens", "streams", "output_tokens_sq"),
          "tokens_per_s": ("output_tokens", "seconds", "rate_sq"),
          "quality": ("quality_sum", "quality_n", "quality_sq")}
"""Per metric (but the label distribution): the ``Frame`` sums of its numerator, denominator, and the sum of
squares of its per-request values (``None``: 0/1 values; ``tokens_per_s``: the sum of ``tokens^2 / seconds``,
so ``sum q - R Y`` is the requests' spread around the ratio weighted by their seconds)."""

SAMPLES = {"tokens_per_s": "streams"}
"""A metric whose samples (its minimum sample and the report's ``n``) are not its denominator: tokens per
second is a ratio over seconds, but its samples are the streams."""


def samples_of(name: str) -> str:
    """The ``Frame`` sum that counts the samples of metric ``name``."""
    return SAMPLES.get(name, LABEL_DENOMINATOR if name == "label_distribution" else RATIOS[name][1])

LABEL_DENOMINATOR = "predictions"
"""Each label's share is its count over the predictions."""


@dataclass(frozen=True)
class MetricArrays:
    """One metric of one treatment in ``B`` experiments."""

    codes: np.ndarray
    """Verdict codes ``(B,)``."""
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    contrast: Contrast
    """The headline contrast (label distribution: the label that moved most in experiment 0)."""
    per_label: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Label distribution only: ``(estimate, low, high)`` per label."""


@dataclass(frozen=True)
class SampleRatioArrays:
    """The sample-ratio check in ``B`` experiments."""

    mismatch: np.ndarray
    """``(B,)`` bool: either test found a mismatch."""
    units_log_evalue: np.ndarray
    units_threshold: float
    """``log(1 / level)`` of the units' test."""
    requests: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    """Per treatment arm: ``(observed - configured share, low, high)`` of its requests."""
    requests_level: float


def verdict_codes(low, high, margin: float, enough, higher_is_better: bool | None) -> np.ndarray:
    """The verdict code per interval: not enough -> better/worse/different -> equivalent -> undecided.

    A CS of ``treatment - control`` above 0 is "better" when higher is better ("worse" otherwise), below 0
    the reverse, and "different" for a metric without direction; inside ``[-margin, margin]`` it is
    "equivalent within margin"; otherwise "no decision yet".
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    above, below = low > 0, high < 0
    if higher_is_better is None:
        decided = np.where(above | below, DIFFERENT, UNDECIDED)
    else:
        up, down = (BETTER, WORSE) if higher_is_better else (WORSE, BETTER)
        decided = np.where(above, up, np.where(below, down, UNDECIDED))
    equivalent = (low >= -margin) & (high <= margin)
    decided = np.where((decided == UNDECIDED) & equivalent, EQUIVALENT, decided)
    return np.where(np.asarray(enough, dtype=bool), decided, NOT_ENOUGH).astype(np.int8)


def arm_totals(frame: Frame, field: str, t: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B,)`` totals of sum ``field`` in the control and in arm ``t``, over every period."""
    sums, P = frame.layout.group_sums(frame.sums[field]), frame.n_periods
    return sums[:, :P].sum(axis=1), sums[:, t * P:(t + 1) * P].sum(axis=1)


def _contrast(frame: Frame, y: np.ndarray, n: np.ndarray, q: np.ndarray | None, treatment: int) -> Contrast:
    return contrast(y, n, q, frame.layout, treatment)


def _labels(frame: Frame, t: int, a: float, cfg: JudgeConfig) -> MetricArrays:
    names = sorted(k for k, v in frame.labels.items() if v.sum() > 0)
    n = frame.sums[LABEL_DENOMINATOR]
    tests = 1 if len(names) == 2 else max(len(names), 1)
    parts = {k: _contrast(frame, frame.labels[k], n, None, t) for k in names[: 1 if len(names) == 2 else None]}
    per_label = {k: c.interval(a / tests, cfg.tune_n) for k, c in parts.items()}
    if len(names) == 2:  # two labels' shares move together: the second is the first's mirror image
        est, low, high = per_label[names[0]]
        per_label[names[1]] = (-est, -high, -low)
        parts[names[1]] = parts[names[0]]
    B = frame.batch
    if len(names) < 2:
        empty = _contrast(frame, np.zeros_like(n), n, None, t)
        return MetricArrays(np.full(B, NOT_ENOUGH, dtype=np.int8), np.full(B, np.nan), np.full(B, -np.inf),
                            np.full(B, np.inf), empty)
    est = np.stack([per_label[k][0] for k in names], -1)
    low = np.stack([per_label[k][1] for k in names], -1)
    high = np.stack([per_label[k][2] for k in names], -1)
    margin = cfg.margins.label_distribution
    different = ((low > 0) | (high < 0)).any(axis=-1)
    equivalent = ((low >= -margin) & (high <= margin)).all(axis=-1)
    first = parts[names[0]]
    enough = np.minimum(first.n_control, first.n_treatment) >= cfg.min_samples.label_distribution
    codes = np.where(different, DIFFERENT, np.where(equivalent, EQUIVALENT, UNDECIDED))
    codes = np.where(enough, codes, NOT_ENOUGH).astype(np.int8)
    widest = int(np.nanargmax(np.abs(est[0]))) if np.isfinite(est[0]).any() else 0
    b = np.arange(B)
    return MetricArrays(codes, est[b, widest], low[b, widest], high[b, widest], parts[names[widest]], per_label)


def evaluate_treatment(frame: Frame, t: int, cfg: JudgeConfig, a: float) -> dict[str, MetricArrays]:
    """Every metric of arm ``t`` against the control, each CS at level ``a``."""
    out: dict[str, MetricArrays] = {}
    for name in metrics_of(frame.generative):
        if name == "label_distribution":
            out[name] = _labels(frame, t, a, cfg)
            continue
        y, n, q = RATIOS[name]
        c = _contrast(frame, frame.sums[y], frame.sums[n], None if q is None else frame.sums[q], t)
        est, low, high = c.interval(a, cfg.tune_n)
        n_control, n_treatment = arm_totals(frame, samples_of(name), t)
        enough = np.minimum(n_control, n_treatment) >= getattr(cfg.min_samples, name)
        if name == "latency_p99":
            enough = enough & frame.tail_known
        codes = verdict_codes(low, high, getattr(cfg.margins, name), enough, HIGHER_IS_BETTER[name])
        out[name] = MetricArrays(codes, est, low, high, c)
    return out


def sample_ratio(frame: Frame, cfg: JudgeConfig, a: float) -> SampleRatioArrays:
    """Both sample-ratio tests at ``a / 2`` each (the requests' split over the treatment arms)."""
    c = srm.concentration(cfg.tune_n, a / 2)
    log_e = srm.units_log_evalue(frame.new_units, frame.shares, c)
    threshold = math.log(2 / a)
    level = a / 2 / (len(frame.arms) - 1)
    requests, mismatch = {}, log_e >= threshold
    for t in range(1, len(frame.arms)):
        shift = srm.request_shift(frame.sums["requests"], frame.assigned, frame.unit, frame.keyed,
                                  frame.n_units, frame.shares, t)
        est, low, high = shift.interval(level, 2 * cfg.tune_n)
        requests[frame.arms[t]] = (est, low, high)
        mismatch = mismatch | (low > 0) | (high < 0)
    return SampleRatioArrays(mismatch, log_e, threshold, requests, level)


def evaluate(frame: Frame, cfg: JudgeConfig) -> tuple[dict[str, dict[str, MetricArrays]], SampleRatioArrays]:
    """Every treatment's metrics against the control, and the sample-ratio check (alpha split over all)."""
    a = cfg.alpha_per_metric(len(frame.arms) - 1, frame.generative)
    treatments = {frame.arms[t]: evaluate_treatment(frame, t, cfg, a) for t in range(1, len(frame.arms))}
    return treatments, sample_ratio(frame, cfg, a)
