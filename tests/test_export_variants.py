"""The export variants behind the parity gate: fused fp32, static int8, batch invariance, length-bucketed
batches in the served model, and serving settings derived from the core count."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
from transformers import AutoTokenizer

from export.config import ExportConfig, serving_defaults
from export.contract import VARIANT_FILES
from export.errors import ConfigError, InputError
from export.onnx import UNFUSED_FILE
from export.parity import batch_invariance, check_parity, onnx_logits, onnx_session
from export.publish import publish
from export.quantize import FLOAT_CONSUMERS, training_texts
from export.triton_model.model import TextClassifier, length_buckets
from tests.conftest import shift_bias
from training.data import read_jsonl
from tunestack import names
from tunestack.layout import RunLayout

FUSED_OPS = {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"}


def _ops(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def test_fp32_is_the_fused_graph_and_passes_the_gate(tiny_onnx_dir):
    fused, unfused = _ops(tiny_onnx_dir / VARIANT_FILES["fp32"]), _ops(tiny_onnx_dir / UNFUSED_FILE)
    assert FUSED_OPS <= set(fused), fused
    assert not FUSED_OPS & set(unfused), "the unfused export is Optimum's graph as written"
    assert sum(fused.values()) < sum(unfused.values()) / 3
    fp32 = json.loads((tiny_onnx_dir / names.PARITY_FILE).read_text())["variants"]["fp32"]
    assert fp32["publishable"] and fp32["label_agreement"] == 1.0 and fp32["max_abs_diff"] <= 1e-4


def test_both_int8_variants_are_built_on_the_fused_graph(tiny_onnx_dir):
    dynamic, static = _ops(tiny_onnx_dir / VARIANT_FILES["int8"]), _ops(tiny_onnx_dir / VARIANT_FILES["int8-static"])
    assert dynamic["DynamicQuantizeLinear"] > 0 and "QAttention" in dynamic  # dynamic: activations quantized per batch
    assert static["QuantizeLinear"] > 0 and static["DequantizeLinear"] > static["QuantizeLinear"]  # QDQ
    assert "DynamicQuantizeLinear" not in static, "static int8 must not quantize activations at run time"
    assert "Attention" in static and "SkipLayerNormalization" in static
    # a MatMul feeding GELU stays fp32: no integer kernel could consume its QDQ pair
    graph = onnx.load(tiny_onnx_dir / VARIANT_FILES["int8-static"]).graph
    gelu_inputs = {name for node in graph.node if node.op_type in FLOAT_CONSUMERS for name in node.input}
    producers = {out: node for node in graph.node for out in node.output}
    feeding = [producers[name] for name in gelu_inputs if name in producers and producers[name].op_type == "MatMul"]
    assert len(feeding) == 2 and not any("DequantizeLinear" in name for node in feeding for name in node.input)


def test_static_int8_is_gated_like_dynamic(tiny_onnx_dir, tmp_path):
    """Relabel the held-out set with fp32's predictions (fp32 accuracy 1.0), push int8-static towards one
    label: it fails the default 1-point gate while dynamic int8 is judged on its own."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_onnx_dir.parent, runs / "tiny")
    tiny = RunLayout.of(runs, "tiny")
    merged, onnx_dir = tiny.merged, tiny.onnx
    examples = read_jsonl(tiny.heldout)
    labels = json.loads((merged / names.LABEL_MAP_FILE).read_text())["labels"]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    predicted = onnx_logits(onnx_session(onnx_dir / VARIANT_FILES["fp32"]), tokenizer, [e.text for e in examples], 32, 32).argmax(-1)
    tiny.heldout.write_text("".join(json.dumps({"text": e.text, "label": labels[p]}) + "\n"
                                    for e, p in zip(examples, predicted, strict=True)))
    rare = int(np.argmin(np.bincount(predicted, minlength=len(labels))))
    shift_bias(onnx_dir / VARIANT_FILES["int8-static"], rare, 50.0)

    report = check_parity(onnx_dir, merged, ExportConfig(adapter=tiny.adapter, runs_dir=runs, publish=False,
                                                         variants=tuple(VARIANT_FILES)))
    static = report["variants"]["int8-static"]
    assert report["variants"]["fp32"]["accuracy"] == 1.0 and not report["passed"]
    assert not static["publishable"] and static["checks"][0]["name"] == "accuracy_drop_points"
    assert static["checks"][0]["value"] >= 20.0


def test_every_variant_reports_batch_invariance(tiny_onnx_dir):
    variants = json.loads((tiny_onnx_dir / names.PARITY_FILE).read_text())["variants"]
    assert set(variants) == {"fp32", "int8", "int8-static"}
    for name in ("fp32", "int8-static"):
        assert variants[name]["batch_invariant"] is True, variants[name]["batch_invariance"]
        assert variants[name]["batch_invariance"]["max_prob_diff"] <= 1e-6
    # dynamic int8 quantizes activations with the whole batch's range: batch-mates move its answers
    assert variants["int8"]["batch_invariant"] is False
    assert variants["int8"]["batch_invariance"]["max_prob_diff"] > 1e-6
    assert all(v["batch_invariance"]["probes"] == 32 and v["batch_invariance"]["batch_mates"] == 16
               for v in variants.values())


def test_batch_invariance_catches_an_answer_that_depends_on_its_batch():
    texts = [f"text {i}" for i in range(40)]

    def per_text(batch):
        return np.array([[len(t) * 0.1, 1.0] for t in batch])

    def batch_dependent(batch):  # a batch-wide statistic leaks into every row, as dynamic quantization does
        return per_text(batch) + 1e-3 * len(batch) * np.array([[1.0, 0.0]])

    assert batch_invariance(per_text, texts, 8, 1e-6)["invariant"] is True
    found = batch_invariance(batch_dependent, texts, 8, 1e-6)
    assert found["invariant"] is False and 1e-5 < found["max_prob_diff"] < 1e-2 and found["label_changes"] == 0


def test_calibration_reads_training_texts_never_held_out_ones(tiny_onnx_dir):
    merged, heldout = RunLayout.of_folder(tiny_onnx_dir).merged, RunLayout.of_folder(tiny_onnx_dir).heldout
    texts = training_texts(merged, None, 1000, heldout)
    held = {e.text for e in read_jsonl(heldout)}
    assert len(texts) > 200 and not held & set(texts)
    with pytest.raises(InputError, match=r"calibration text\(s\) .* are in the held-out set"):
        training_texts(merged, heldout, 100, heldout)
    with pytest.raises(ConfigError, match="unknown calibration_method 'kl'"):
        ExportConfig(calibration_method="kl")


def test_length_buckets_bound_the_padding_and_cover_every_index():
    lengths = [40, 8, 9, 64, 10, 33, 8, 62, 12]
    buckets = length_buckets(lengths, 0.25)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        padded = len(bucket) * max(lengths[i] for i in bucket)
        assert padded <= 1.25 * sum(lengths[i] for i in bucket)
    assert [sorted(lengths[i] for i in b) for b in buckets] == [[8, 8, 9, 10], [12], [33, 40], [62, 64]]
    assert length_buckets(lengths, None) == [list(range(len(lengths)))]
    assert length_buckets([], 0.25) == []


@pytest.mark.parametrize("variant", ["fp32", "int8-static", "int8"])
def test_bucketed_batches_answer_like_unbucketed_in_request_order(tiny_onnx_dir, tmp_path, variant):
    cfg = ExportConfig(repository=tmp_path / "repo")
    version = publish(tiny_onnx_dir, variant, cfg)
    texts = [e.text for e in read_jsonl(RunLayout.of_folder(tiny_onnx_dir).heldout)[:40]]
    texts[5] = "word " * 200  # truncated to max_length: the longest bucket
    bucketed = TextClassifier(version, 1)
    unbucketed = TextClassifier(version, 1, max_padding=None)
    assert len(length_buckets([len(e.ids) for e in bucketed.tokenizer.encode(texts)])) >= 2
    probabilities, labels = bucketed.predict(texts)
    reference, reference_labels = unbucketed.predict(texts)
    alone = np.concatenate([unbucketed.predict([t])[0] for t in texts])
    # fp32 and static int8: the same within float noise; dynamic int8 moves with its batch-mates
    atol = 1e-2 if variant == "int8" else 1e-6
    np.testing.assert_allclose(probabilities, alone, atol=atol)
    np.testing.assert_allclose(probabilities, reference, atol=atol)
    if variant != "int8":
        assert labels == reference_labels


def test_serving_settings_follow_the_core_count():
    assert serving_defaults(1) == {"instance_count": 1, "intra_op_threads": 1, "max_queue_delay_us": 500,
                                   "preferred_batch_sizes": ()}
    for cores, (instances, threads) in {2: (1, 2), 4: (1, 4), 8: (2, 4), 16: (4, 4), 6: (1, 4)}.items():
        got = serving_defaults(cores)
        assert (got["instance_count"], got["intra_op_threads"]) == (instances, threads), cores
        assert got["instance_count"] * got["intra_op_threads"] <= cores
    cfg = ExportConfig(cpu_count=8, instance_count=3, max_queue_delay_us=0)  # flags override the derived values
    assert (cfg.instance_count, cfg.intra_op_threads, cfg.max_queue_delay_us) == (3, 4, 0)
    with pytest.raises(ConfigError, match="cpu_count must be >= 1, got 0"):
        ExportConfig(cpu_count=0)


def test_published_config_and_provenance_record_the_derived_settings(tiny_onnx_dir, tmp_path):
    from export import triton_config

    cfg = ExportConfig(repository=tmp_path / "repo", cpu_count=8)
    version = publish(tiny_onnx_dir, "int8-static", cfg)
    config = triton_config.parse_pbtxt((version.parent / "config.pbtxt").read_text())
    assert config.instance_group[0].count == 2 and config.parameters["intra_op_threads"].string_value == "4"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    provenance = json.loads((version / "provenance.json").read_text())
    assert provenance["variant"] == "int8-static" and provenance["parity"]["batch_invariant"] is True
    exported = provenance["export_config"]
    assert (exported["cpu_count"], exported["instance_count"], exported["intra_op_threads"]) == (8, 2, 4)
    assert ExportConfig.from_dict(exported).to_dict() == exported  # the recorded config re-creates itself
