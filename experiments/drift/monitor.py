"""Drift on live traffic: per arm, live inputs and predictions against the training reference.

Four features, each compared with the reference saved with the run (``Reference``, a JSON file):

* ``text_length``: tokens per input text (special tokens excluded);
* ``unknown_token_rate``: the fraction of a text's tokens that are the tokenizer's unknown token;
* ``confidence``: the top-class probability of each prediction (label-free);
* ``label_shares``: the predicted-label mix.

Numeric features get the population stability index (PSI, on the reference's deciles) and the two-sample
Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``); the label mix gets the categorical PSI. A feature has
"drifted" when its PSI exceeds ``psi_threshold`` (0.2, the usual "significant shift" rule of thumb) or,
for numeric features, its KS p-value is below ``ks_alpha``. These are fixed-window checks, meant for
monitoring (gauges, a report section), not verdicts with a sequential error guarantee.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from export.drift_reference import Reference, text_features

NUMERIC = ("text_length", "unknown_token_rate", "confidence")
"""The numeric features, compared by PSI and KS."""
EPS = 1e-4
"""Floor of a bin's share in the PSI (an empty bin would make it infinite)."""
PSI_THRESHOLD = 0.2
"""A feature whose PSI exceeds this has drifted (the usual "significant shift" rule of thumb)."""
KS_ALPHA = 0.01
"""A numeric feature whose KS p-value is below this has drifted."""
MIN_SAMPLES = 200
"""Monitored texts per arm before its drift figures count (gauges, report, guardrail): below it the PSI of 10
bins of an unchanged distribution (about 9 / n) is too close to the threshold."""


def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``live`` against ``reference`` on the reference's quantile bins."""
    reference, live = np.asarray(reference, dtype=np.float64), np.asarray(live, dtype=np.float64)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    a = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1) / len(live)
    e, a = np.maximum(e, EPS), np.maximum(a, EPS)
    return float(((a - e) * np.log(a / e)).sum())


def categorical_psi(reference_shares: Mapping[str, float], live_counts: Mapping[str, int]) -> float:
    """PSI of a live label mix against reference shares (labels missing on one side count as ~0)."""
    total = sum(live_counts.values())
    labels = sorted(set(reference_shares) | set(live_counts))
    e = np.maximum([reference_shares.get(k, 0.0) for k in labels], EPS)
    a = np.maximum([live_counts.get(k, 0) / total for k in labels], EPS)
    return float(((a - e) * np.log(a / e)).sum())


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of one arm against the reference."""

    n: int
    psi: float
    ks_statistic: float | None
    ks_p_value: float | None
    drifted: bool


@dataclass(frozen=True)
class DriftWindow:
    """One arm's monitored texts, oldest first, and the reference they are compared with."""

    model: str
    version: str
    reference: dict[str, Any]
    """The fields of ``Reference``."""
    live: dict[str, list[float]]
    """``text_length``, ``unknown_token_rate`` and ``confidence`` (those known) of each text."""
    labels: Counter
    """The predicted labels (those known)."""


def compare(reference: Reference, live: Mapping[str, Sequence[float]], labels: Mapping[str, int],
            psi_threshold: float = PSI_THRESHOLD, ks_alpha: float = KS_ALPHA,
            min_samples: int = 50) -> dict[str, FeatureDrift]:
    """Each feature with enough live samples (``min_samples``) against the reference."""
    out: dict[str, FeatureDrift] = {}
    for name in NUMERIC:
        ref, cur = np.asarray(getattr(reference, name)), np.asarray(live.get(name, ()), dtype=np.float64)
        if len(ref) == 0 or len(cur) < min_samples:
            continue
        ks = sps.ks_2samp(ref, cur)
        value = psi(ref, cur)
        out[name] = FeatureDrift(len(cur), value, float(ks.statistic), float(ks.pvalue),
                                 value > psi_threshold or ks.pvalue < ks_alpha)
    n = sum(labels.values())
    if reference.label_shares and n >= min_samples:
        value = categorical_psi(reference.label_shares, labels)
        out["label_shares"] = FeatureDrift(n, value, None, None, value > psi_threshold)
    return out


class DriftMonitor:
    """Keeps the last ``window`` live samples per arm and feature; ``report()`` compares them with the reference."""

    def __init__(self, reference: Reference, tokenizer, window: int = 2000, psi_threshold: float = PSI_THRESHOLD,
                 ks_alpha: float = KS_ALPHA, min_samples: int = 50):
        self.reference, self.tokenizer, self.window = reference, tokenizer, window
        self.psi_threshold, self.ks_alpha, self.min_samples = psi_threshold, ks_alpha, min_samples
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, deque]] = {}
        self._labels: dict[str, deque] = {}

    def _arm(self, arm: str) -> dict[str, deque]:
        if arm not in self._live:
            self._live[arm] = {k: deque(maxlen=self.window) for k in NUMERIC}
            self._labels[arm] = deque(maxlen=self.window)
        return self._live[arm]

    def observe(self, arm: str, texts: Sequence[str], labels: Sequence[str] = (),
                confidences: Sequence[float] = ()) -> None:
        """One request's texts, and the arm's predictions for them if known."""
        feats = text_features(texts, self.tokenizer)
        with self._lock:
            live = self._arm(arm)
            for name, values in feats.items():
                live[name].extend(values.tolist())
            live["confidence"].extend(float(c) for c in confidences)
            self._labels[arm].extend(labels)

    def report(self) -> dict[str, dict[str, FeatureDrift]]:
        """Per arm, per feature with enough samples: PSI, KS and whether it drifted."""
        with self._lock:
            snap = {arm: ({k: list(v) for k, v in live.items()}, Counter(self._labels[arm]))
                    for arm, live in self._live.items()}
        return {arm: compare(self.reference, live, labels, self.psi_threshold, self.ks_alpha, self.min_samples)
                for arm, (live, labels) in snap.items()}

    def export(self, registry, experiment: str) -> None:
        """Set Prometheus gauges ``drift_psi`` and ``drift_detected`` (labels experiment, arm, feature)."""
        from prometheus_client import Gauge

        def gauge(name: str, help_: str) -> Gauge:
            existing = getattr(registry, "_names_to_collectors", {}).get(name)
            return existing or Gauge(name, help_, ["experiment", "arm", "feature"], registry=registry)

        g_psi = gauge("drift_psi", "Population stability index of a live feature against the training reference")
        g_hit = gauge("drift_detected", "1 when a live feature drifted from the training reference (PSI or KS)")
        for arm, feats in self.report().items():
            for name, d in feats.items():
                g_psi.labels(experiment, arm, name).set(d.psi)
                g_hit.labels(experiment, arm, name).set(float(d.drifted))


def drift_report(windows: Mapping[str, DriftWindow]) -> dict[str, dict[str, FeatureDrift]]:
    """``DriftMonitor.report()`` of the windows a store keeps (``experiments.store.drift_windows``): each arm's
    texts against its reference, compared as the router's monitors compare theirs (same thresholds and minimum)."""
    return {arm: compare(Reference(**w.reference), w.live, w.labels, PSI_THRESHOLD, KS_ALPHA, MIN_SAMPLES)
            for arm, w in windows.items()}
