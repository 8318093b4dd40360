"""Drift on live traffic: in-domain reviews do not drift from a review reference, news headlines do.

Real texts (the bundled Rotten Tomatoes reviews and Guardian headlines) and the bundled MiniLM tokenizer."""

from __future__ import annotations

import bz2
import csv
from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from transformers import AutoTokenizer

from serving.judge.drift import DriftMonitor, Reference, categorical_psi, compare, psi
from training.bundled import bundled_data_file, bundled_model_dir
from tunestack import names


def _column(path, column: str, keep=lambda row: True) -> list[str]:
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f) if keep(row) and row[column].strip()]


@pytest.fixture(scope="module")
def corpora():
    reviews = _column(bundled_data_file(), "text", lambda r: r["category"] in {"fresh", "rotten"})
    headlines = _column(bundled_data_file().with_name("guardian_headlines.csv.bz2"), "Text")
    rng = np.random.default_rng(0)
    rng.shuffle(reviews)
    return reviews, headlines, AutoTokenizer.from_pretrained(bundled_model_dir())


def test_psi_is_zero_for_the_same_sample_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert psi(ref, rng.normal(0, 1, 2000)) < 0.05 < 0.2 < psi(ref, rng.normal(1, 1, 2000))
    # PSI of shares: sum (a - e) ln(a / e)
    assert categorical_psi({"a": 0.5, "b": 0.5}, {"a": 70, "b": 30}) == pytest.approx(
        0.2 * np.log(0.7 / 0.5) - 0.2 * np.log(0.3 / 0.5))


def test_in_domain_reviews_do_not_drift_and_headlines_do(corpora, tmp_path):
    reviews, headlines, tok = corpora
    ref = Reference.from_texts(reviews[:3000], tok, labels=["positive"] * 1500 + ["negative"] * 1500,
                               confidences=np.random.default_rng(2).beta(8, 2, 3000))
    ref.write(tmp_path / names.DRIFT_REFERENCE_FILE)
    ref = Reference.read(tmp_path / names.DRIFT_REFERENCE_FILE)
    monitor = DriftMonitor(ref, tok)
    for i in range(0, 300, 10):  # 30 requests of 10 texts per arm
        monitor.observe("control", reviews[3000 + i: 3010 + i], labels=["positive", "negative"] * 5)
        monitor.observe("ood", headlines[i: i + 10], labels=["negative"] * 8 + ["positive"] * 2)
    got = monitor.report()
    control, ood = got["control"], got["ood"]
    assert not control["text_length"].drifted and control["text_length"].psi < 0.1
    assert not control["label_shares"].drifted
    assert ood["text_length"].drifted and ood["text_length"].psi > 0.2 and ood["text_length"].ks_p_value < 1e-6
    assert ood["label_shares"].drifted  # 80 % negative against 50 %
    assert "confidence" not in ood  # no confidences observed: not compared
    registry = CollectorRegistry()
    monitor.export(registry, "ab")
    monitor.export(registry, "ab")  # twice: the gauges are reused, not registered again
    assert registry.get_sample_value("drift_detected", {"experiment": "ab", "arm": "ood", "feature": "text_length"}) == 1.0
    assert registry.get_sample_value("drift_detected", {"experiment": "ab", "arm": "control",
                                                        "feature": "text_length"}) == 0.0


def test_compare_needs_min_samples_and_bad_reference_is_named():
    ref = Reference([10.0] * 100, [0.0] * 100, label_shares={"a": 1.0})
    assert compare(ref, {"text_length": [10.0] * 10}, Counter(a=10)) == {}
    with pytest.raises(ValueError, match=r"label_shares=.*summing to 1"):
        Reference([1.0], [0.0], label_shares={"a": 0.3})
    with pytest.raises(ValueError, match="text_length: empty reference sample"):
        Reference([], [0.0])
