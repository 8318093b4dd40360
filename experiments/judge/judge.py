"""The anytime-valid judge: per metric, a confidence sequence of ``treatment - control`` and a verdict.

    from experiments.judge import Judge, JudgeConfig

    j = Judge(JudgeConfig(alpha=0.05), arms=("control", "int8"))
    j.answered("int8", latency_ms=4.2, label="positive", confidence=0.91)   # as requests arrive
    j.failed("control")                                                      # a server error
    j.feedback("int8", correct=True)
    result = j.report()              # any time, as often as you like: {"int8": Judgement}
    result["int8"].metrics["accuracy"].verdict    # "worse", "equivalent within margin", ...

or, from a store's snapshot, ``judge(control_stats, treatment_stats, config)`` with two ``ArmStats``.

Verdicts: "not enough evidence yet" (an arm below the metric's minimum sample), "better"/"worse" (the CS
of the difference excludes 0; its interval is the size), "different" (label distribution: some label's
share moved), "equivalent within margin" (the whole CS inside +-margin), "no decision yet". The CSs hold
at every look at once, and the Bonferroni split over the six metrics keeps the chance of any false
better/worse/different across all metrics and all looks at most ``alpha`` (``config.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from experiments.judge import metrics as m
from experiments.judge.config import HIGHER_IS_BETTER, METRICS, UNITS, JudgeConfig
from experiments.judge.snapshot import ArmAccumulator, ArmStats


@dataclass(frozen=True)
class MetricResult:
    """One metric's verdict with the CS of ``treatment - control`` (``None``: no estimate yet)."""

    verdict: str
    estimate: float | None
    low: float | None
    high: float | None
    n_control: int
    n_treatment: int
    min_samples: int
    margin: float
    unit: str = ""
    per_label: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Label distribution only: the CS of each label's share difference."""

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.per_label:
            out.pop("per_label")
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


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _result(code, est, low, high, n_c: int, n_t: int, name: str, cfg: JudgeConfig, **extra) -> MetricResult:
    return MetricResult(m.VERDICTS[int(code)], _finite(est), _finite(low), _finite(high), n_c, n_t,
                        getattr(cfg.min_samples, name), getattr(cfg.margins, name), UNITS[name], **extra)


def _interval_metric(name: str, est, low, high, n_c: int, n_t: int, cfg: JudgeConfig) -> MetricResult:
    enough = min(n_c, n_t) >= getattr(cfg.min_samples, name)
    code = m.verdict_codes(low, high, getattr(cfg.margins, name), enough, HIGHER_IS_BETTER[name])
    return _result(code, est, low, high, n_c, n_t, name, cfg)


def _labels(c: ArmStats, t: ArmStats, a: float, cfg: JudgeConfig) -> MetricResult:
    labels = sorted({k for k in (*c.labels, *t.labels) if c.labels.get(k, 0) + t.labels.get(k, 0) > 0})
    n_c, n_t = sum(c.labels.values()), sum(t.labels.values())
    enough = min(n_c, n_t) >= cfg.min_samples.label_distribution and len(labels) >= 2
    if len(labels) < 2:
        return _result(m.NOT_ENOUGH, math.nan, -math.inf, math.inf, n_c, n_t, "label_distribution", cfg)
    counts_c = np.array([c.labels.get(k, 0) for k in labels], dtype=np.float64)
    counts_t = np.array([t.labels.get(k, 0) for k in labels], dtype=np.float64)
    code, est, low, high = m.label_share_codes(counts_c, n_c, counts_t, n_t, a, cfg.tune_n,
                                               cfg.margins.label_distribution, enough)
    per_label = {k: {"estimate": _finite(e), "low": _finite(lo), "high": _finite(hi)}
                 for k, e, lo, hi in zip(labels, est, low, high, strict=True)}
    widest = int(np.argmax(np.abs(est)))  # the headline: the label whose share moved most
    return _result(code, est[widest], low[widest], high[widest], n_c, n_t, "label_distribution", cfg,
                   per_label=per_label)


def judge(control: ArmStats, treatment: ArmStats, config: JudgeConfig | None = None,
          comparisons: int = 1) -> Judgement:
    """Every metric of ``treatment`` against ``control`` from two snapshots; valid at any moment.

    ``comparisons``: the number of treatments judged against the same control (alpha is split over them).
    """
    cfg = config or JudgeConfig()
    a = cfg.alpha_per_metric(comparisons)
    c, t = control, treatment
    out: dict[str, MetricResult] = {}
    est, low, high = m.proportion_diff_cs(c.server_errors, c.requests, t.server_errors, t.requests, a)
    out["error_rate"] = _interval_metric("error_rate", est, low, high, c.requests, t.requests, cfg)
    mc, mt = c.clipped_moments(cfg.latency_cap_ms), t.clipped_moments(cfg.latency_cap_ms)
    est, low, high = m.mean_diff_cs(mc.n, mc.total, mc.total_sq, mt.n, mt.total, mt.total_sq, a, cfg.tune_n)
    out["latency_mean"] = _interval_metric("latency_mean", est, low, high, mc.n, mt.n, cfg)
    est, low, high = m.quantile_diff_cs(c.latency_ms, t.latency_ms, cfg.quantile, a, cfg.tune_n)
    out["latency_p99"] = _interval_metric("latency_p99", est, low, high, len(c.latency_ms), len(t.latency_ms), cfg)
    est, low, high = m.mean_diff_cs(c.feedback_total, c.feedback_correct, c.feedback_correct, t.feedback_total,
                                    t.feedback_correct, t.feedback_correct, a, cfg.tune_n, bernoulli=True)
    out["accuracy"] = _interval_metric("accuracy", est, low, high, c.feedback_total, t.feedback_total, cfg)
    out["label_distribution"] = _labels(c, t, a, cfg)
    cc, ct = c.confidence, t.confidence
    est, low, high = m.mean_diff_cs(cc.n, cc.total, cc.total_sq, ct.n, ct.total, ct.total_sq, a, cfg.tune_n)
    out["confidence_mean"] = _interval_metric("confidence_mean", est, low, high, cc.n, ct.n, cfg)
    assert tuple(out) == METRICS
    return Judgement(cfg.alpha, a, out)


class Judge:
    """Feeds samples per arm as they arrive and judges every treatment against the first arm on demand."""

    def __init__(self, config: JudgeConfig | None = None, arms: Sequence[str] = ("control", "treatment")):
        if len(arms) < 2 or len(set(arms)) != len(arms):
            raise ValueError(f"arms={list(arms)}: expected a control and at least one treatment, distinct names")
        self.config = config or JudgeConfig()
        self.arms = tuple(arms)
        self._acc = {a: ArmAccumulator(self.config.latency_cap_ms) for a in self.arms}

    def _arm(self, arm: str) -> ArmAccumulator:
        if arm not in self._acc:
            raise KeyError(f"unknown arm {arm!r}; expected one of: {', '.join(self.arms)}")
        return self._acc[arm]

    def answered(self, arm: str, latency_ms: float, label: str | None = None, confidence: float | None = None) -> None:
        self._arm(arm).answered(latency_ms, label, confidence)

    def failed(self, arm: str, server_error: bool = True) -> None:
        self._arm(arm).failed(server_error)

    def feedback(self, arm: str, correct: bool) -> None:
        self._arm(arm).feedback(correct)

    def report(self) -> dict[str, Judgement]:
        """Each treatment's ``Judgement`` against the control, now."""
        control = self._acc[self.arms[0]].stats()
        treatments = self.arms[1:]
        return {t: judge(control, self._acc[t].stats(), self.config, len(treatments)) for t in treatments}
