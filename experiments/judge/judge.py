"""The anytime-valid judge: per treatment and metric, a confidence sequence of ``treatment - control`` and a
verdict, plus the sample-ratio check, from one ``UnitTable``.

    from experiments.judge import judge
    v = judge(table)                        # any time, as often as you like
    v.sample_ratio.verdict                  # "sample ratio mismatch" / "no mismatch detected": read it first
    v.treatments["int8"].metrics["accuracy"].verdict    # "worse", "equivalent within margin", ...
    v.headline                              # one sentence, the sample-ratio check first

Verdicts: "not enough evidence yet" (an arm below the metric's minimum sample), "better"/"worse" (the CS
of the difference excludes 0; its interval is the size), "different" (label distribution: some label's
share moved), "equivalent within margin" (the whole CS inside +-margin), "no decision yet". The CSs hold
at every look at once, with units (not requests) as the independent observations and the arms compared
within each period of constant weights; the Bonferroni split over every metric of every treatment and the
sample-ratio check keeps the chance of any false verdict across all of them and all looks at most
``alpha`` (``config.py``, ``metrics.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from experiments.judge import metrics as m
from experiments.judge.config import UNITS, JudgeConfig, metrics_of
from experiments.judge.frame import Frame
from experiments.judge.units import UnitTable


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class MetricResult:
    """One metric's verdict with the CS of ``treatment - control`` (``None``: no estimate yet)."""

    verdict: str
    estimate: float | None
    low: float | None
    high: float | None
    n_control: int
    """The metric's denominator in the control (requests, answers, feedback or predictions)."""
    n_treatment: int
    min_samples: int
    margin: float
    unit: str = ""
    per_label: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Label distribution only: the CS of each label's share difference."""
    units_control: int = 0
    """Units (sticky keys; unkeyed requests in buckets) that contributed to the control."""
    units_treatment: int = 0
    design_effect: float | None = None
    """The variance over units / the variance were every request independent (1: no clustering)."""
    threshold_ms: float | None = None
    """``latency_p99`` only: the tail threshold (the control's p99 on the latency grid); the metric is the
    share of answers slower than it."""

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.per_label:
            out.pop("per_label")
        if self.threshold_ms is None:
            out.pop("threshold_ms")
        return out


@dataclass(frozen=True)
class Judgement:
    """All metrics of one treatment against the control, at one moment."""

    alpha: float
    alpha_per_metric: float
    metrics: dict[str, MetricResult]

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "alpha_per_metric": self.alpha_per_metric,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()}}


@dataclass(frozen=True)
class SampleRatio:
    """The sample-ratio check: observed vs configured split of units and of requests (``srm.py``)."""

    verdict: str
    """"sample ratio mismatch" or "no mismatch detected"."""
    alpha: float
    """Its Bonferroni share of alpha (half to the units' test, half to the requests')."""
    units_evalue: float
    """The units' e-value (product over periods); a mismatch at ``units_threshold`` (= 2 / alpha) or above."""
    units_threshold: float
    units: dict[str, dict[str, float]]
    """Per arm: new units ``observed`` and ``expected`` (by the weights of the period each was first seen in),
    and their shares."""
    requests: dict[str, dict[str, float | None]]
    """Per arm: observed and expected share of requests; per treatment the CS of observed - expected."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdicts:
    """Everything the judge says about an experiment at one moment."""

    treatments: dict[str, Judgement]
    sample_ratio: SampleRatio
    headline: str
    """One sentence: the sample-ratio check first, then each treatment's decided metrics."""

    def to_dict(self) -> dict:
        return {"headline": self.headline, "sample_ratio": self.sample_ratio.to_dict(),
                "treatments": {k: v.to_dict() for k, v in self.treatments.items()}}


def _units_per_arm(frame: Frame, n: np.ndarray, arm: int) -> int:
    if frame.unit is None:
        return int(n[0][(frame.group[0] // frame.n_periods) == arm].sum())
    rows = (n[0] > 0) & ((frame.group[0] // frame.n_periods) == arm)
    return int(np.unique(np.broadcast_to(frame.unit, frame.group.shape)[0][rows]).size)


def _result(name: str, arrays: m.MetricArrays, frame: Frame, t: int, cfg: JudgeConfig,
            threshold_ms: float | None) -> MetricResult:
    c = arrays.contrast
    n = frame.sums[m.samples_of(name)]
    n_control, n_treatment = m.arm_totals(frame, m.samples_of(name), t)
    per_label = {k: {"estimate": _finite(e[0]), "low": _finite(lo[0]), "high": _finite(hi[0])}
                 for k, (e, lo, hi) in arrays.per_label.items()}
    return MetricResult(m.VERDICTS[int(arrays.codes[0])], _finite(arrays.estimate[0]), _finite(arrays.low[0]),
                        _finite(arrays.high[0]), int(round(n_control[0])), int(round(n_treatment[0])),
                        getattr(cfg.min_samples, name), getattr(cfg.margins, name), UNITS[name], per_label,
                        _units_per_arm(frame, n, 0), _units_per_arm(frame, n, t), _finite(c.design_effect[0]),
                        threshold_ms if name == "latency_p99" else None)


def _sample_ratio(s: m.SampleRatioArrays, frame: Frame, a: float) -> SampleRatio:
    observed = frame.new_units[0].sum(axis=0)
    expected = (frame.new_units[0].sum(axis=1, keepdims=True) * frame.shares).sum(axis=0)
    total = max(float(observed.sum()), 1.0)
    units = {arm: {"observed": float(o), "expected": float(e), "observed_share": float(o) / total,
                   "expected_share": float(e) / total}
             for arm, o, e in zip(frame.arms, observed, expected, strict=True)}
    req = frame.sums["requests"][0]
    by_group = np.bincount(frame.assigned[0], weights=req, minlength=frame.n_groups).reshape(len(frame.arms), -1)
    r_total = max(float(req.sum()), 1.0)
    expected_r = (by_group.sum(axis=0) * frame.shares.T).sum(axis=1) / r_total
    requests: dict[str, dict[str, float | None]] = {}
    for i, arm in enumerate(frame.arms):
        row: dict[str, float | None] = {"observed_share": float(by_group[i].sum()) / r_total,
                                        "expected_share": float(expected_r[i])}
        if arm in s.requests:
            est, low, high = (x[0] for x in s.requests[arm])
            row.update(estimate=_finite(est), low=_finite(low), high=_finite(high))
        requests[arm] = row
    e = float(np.exp(min(float(s.units_log_evalue[0]), 700.0)))
    return SampleRatio(m.MISMATCH if bool(s.mismatch[0]) else m.NO_MISMATCH, a, e, math.exp(s.units_threshold),
                       units, requests)


def headline(treatments: dict[str, Judgement], sample_ratio: SampleRatio, control: str) -> str:
    """One sentence: a sample-ratio mismatch first (it voids the rest), then each treatment's verdicts."""
    if sample_ratio.verdict == m.MISMATCH:
        shares = ", ".join(f"{a} {100 * u['observed_share']:.1f} % of units / "
                           f"{100 * sample_ratio.requests[a]['observed_share']:.1f} % of requests "
                           f"(configured {100 * u['expected_share']:.1f} %)" for a, u in sample_ratio.units.items())
        return f"Sample ratio mismatch: {shares}; the split is broken, so no other verdict can be trusted."
    parts = []
    for t, j in treatments.items():
        by: dict[str, list[str]] = {}
        for name, r in j.metrics.items():
            by.setdefault(r.verdict, []).append(name)
        said = [f"{v} on {', '.join(by[v])}" for v in ("worse", "different", "better", "equivalent within margin")
                if v in by]
        rest = len(by.get("no decision yet", [])) + len(by.get("not enough evidence yet", []))
        if rest:
            said.append(f"{rest} undecided")
        parts.append(f"{t} vs {control}: {'; '.join(said)}")
    return "No sample ratio mismatch. " + ". ".join(parts) + "."


def judge(table: UnitTable, config: JudgeConfig | None = None) -> Verdicts:
    """Every treatment (every arm after the first) against the control (the first arm), and the
    sample-ratio check, from one ``UnitTable``; valid at any moment and at every look."""
    cfg = config or JudgeConfig()
    frame = Frame.from_table(table)
    arrays, srm = m.evaluate(frame, cfg)
    a = cfg.alpha_per_metric(len(frame.arms) - 1, frame.generative)
    treatments = {}
    for t, name in enumerate(frame.arms[1:], start=1):
        metrics = {k: _result(k, arrays[name][k], frame, t, cfg, table.tail_threshold_ms)
                   for k in metrics_of(frame.generative)}
        treatments[name] = Judgement(cfg.alpha, a, metrics)
    sample_ratio = _sample_ratio(srm, frame, a)
    return Verdicts(treatments, sample_ratio, headline(treatments, sample_ratio, frame.arms[0]))
