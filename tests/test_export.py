"""Merge, ONNX export, parity and the gate on a tiny random BERT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from export.__main__ import main as export_main
from export.config import ExportConfig
from export.contract import VARIANT_FILES
from export.errors import ConfigError, InputError
from export.merge import merge
from export.parity import check_parity
from export.pipeline import run_export
from tests.conftest import shift_bias
from training.model import load_classifier
from tunestack import names
from tunestack.layout import RunLayout


def test_merged_logits_equal_the_peft_model(tiny_adapter_dir, tiny_model_dir, tmp_path):
    merged_dir = merge(tiny_adapter_dir, RunLayout(tmp_path).merged)
    labels = json.loads((tiny_adapter_dir / names.LABEL_MAP_FILE).read_text())["labels"]
    peft_model = PeftModel.from_pretrained(load_classifier(tiny_model_dir, labels), tiny_adapter_dir).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    tok = AutoTokenizer.from_pretrained(merged_dir)
    batch = tok(["a fine film", "dull, long and pointless", "x"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        a, b = peft_model(**batch).logits, merged(**batch).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # LoRA really changed the model: the merged weights differ from the base
    base = load_classifier(tiny_model_dir, labels)
    q_base = base.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(q_base, merged.bert.encoder.layer[0].attention.self.query.weight)


def test_merge_twice_says_already_merged(tiny_adapter_dir, tmp_path, caplog):
    out = merge(tiny_adapter_dir, RunLayout(tmp_path).merged)
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        merge(tiny_adapter_dir, RunLayout(tmp_path).merged)
    assert "already merged" in caplog.text
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_export_passes_the_gate(tiny_onnx_dir):
    parity = json.loads((tiny_onnx_dir / names.PARITY_FILE).read_text())
    fp32 = parity["variants"]["fp32"]
    assert fp32["publishable"] and fp32["label_agreement"] == 1.0 and fp32["max_abs_diff"] <= 1e-4
    assert parity["variants"]["int8"]["max_abs_diff"] > fp32["max_abs_diff"]  # int8 is really quantized
    model = onnx.load(tiny_onnx_dir / "model.onnx")
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    seq_dim = model.graph.input[0].type.tensor_type.shape.dim[1]
    assert batch_dim.dim_param and seq_dim.dim_param, "batch and sequence axes must be dynamic"
    assert (tiny_onnx_dir / "model.int8.onnx").stat().st_size < (tiny_onnx_dir / "model.onnx").stat().st_size


def _perturbed_copy(onnx_dir, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(onnx_dir.parent, runs / "tiny")
    shift_bias(RunLayout.of(runs, "tiny").onnx / "model.onnx", 0, 5.0)
    return runs


def test_perturbed_onnx_fails_the_gate_and_nothing_is_publishable(tiny_onnx_dir, tmp_path):
    runs = _perturbed_copy(tiny_onnx_dir, tmp_path)
    tiny = RunLayout.of(runs, "tiny")
    cfg = ExportConfig(adapter=tiny.adapter, runs_dir=runs, publish=False, int8_max_accuracy_drop=100.0)
    report = check_parity(tiny.onnx, tiny.merged, cfg)
    assert not report["passed"]
    fp32 = report["variants"]["fp32"]
    assert not fp32["publishable"] and fp32["max_abs_diff"] > 1.0
    assert [c["name"] for c in fp32["checks"] if not c["passed"]][0] == "max_abs_diff"
    assert not report["variants"]["int8"]["publishable"], "int8 is derived from a failed fp32 export"
    on_disk = json.loads(RunLayout.of(runs, "tiny").parity.read_text())
    assert not any(v["publishable"] for v in on_disk["variants"].values())


def test_int8_gate_fails_on_an_accuracy_drop(tiny_onnx_dir, tmp_path):
    """Relabel the held-out set with fp32's own predictions (fp32 accuracy = 1.0), then push the int8
    model towards the label fp32 predicts least: int8 loses far more than the default 1.0 point."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_onnx_dir.parent, runs / "tiny")
    tiny = RunLayout.of(runs, "tiny")
    merged = tiny.merged
    from export.parity import onnx_logits, onnx_session

    examples = [json.loads(line) for line in tiny.heldout.read_text().splitlines()]
    labels = json.loads((merged / names.LABEL_MAP_FILE).read_text())["labels"]
    tok = AutoTokenizer.from_pretrained(merged)
    preds = onnx_logits(onnx_session(tiny.onnx / "model.onnx"), tok, [e["text"] for e in examples], 32, 32).argmax(-1)
    tiny.heldout.write_text("".join(json.dumps({"text": e["text"], "label": labels[p]}) + "\n" for e, p in zip(examples, preds, strict=True)))
    rare = int(np.argmin(np.bincount(preds, minlength=len(labels))))
    shift_bias(tiny.onnx / "model.int8.onnx", rare, 50.0)

    cfg = ExportConfig(adapter=tiny.adapter, runs_dir=runs, publish=False)  # default gate: 1.0 point
    report = check_parity(tiny.onnx, merged, cfg)
    assert report["variants"]["fp32"]["accuracy"] == 1.0 and report["variants"]["fp32"]["publishable"]
    int8 = report["variants"]["int8"]
    assert not int8["publishable"] and not report["passed"]
    assert int8["checks"][0]["name"] == "accuracy_drop_points" and int8["checks"][0]["value"] >= 50.0


def test_cli_exits_nonzero_when_the_gate_fails(tiny_onnx_dir, tmp_path, capsys):
    runs = _perturbed_copy(tiny_onnx_dir, tmp_path)
    code = export_main(["--adapter", str(RunLayout.of(runs, "tiny").adapter), "--runs-dir", str(runs), "--variants", "fp32", "--no-publish"])
    out = capsys.readouterr()
    assert code == 1, out.err
    assert "FAIL: max_abs_diff=" in out.out and "nothing was published" in out.err


def test_export_is_safe_to_run_twice(tiny_onnx_dir, caplog):
    runs = tiny_onnx_dir.parent.parent
    cfg = ExportConfig(adapter=RunLayout.of(runs, "tiny").adapter, runs_dir=runs, publish=False, int8_max_accuracy_drop=100.0,
                       variants=tuple(VARIANT_FILES))  # as the fixture exported it
    with caplog.at_level("INFO"):
        result = run_export(cfg)
    assert "already merged" in caplog.text and "already exported" in caplog.text
    assert "parity already checked" in caplog.text
    assert result.passed


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run_export(ExportConfig(adapter=tmp_path / "missing", runs_dir=tmp_path))
    bad = RunLayout.of(tmp_path, "x").adapter
    bad.mkdir(parents=True)
    (bad / "notes.txt").write_text("")
    with pytest.raises(InputError, match=r"missing \['adapter_config.json'.*\(found: \['notes.txt'\]\)"):
        run_export(ExportConfig(adapter=bad, runs_dir=tmp_path))
    with pytest.raises(ConfigError, match="unknown variant"):
        ExportConfig(variants=("fp16",))
    with pytest.raises(ConfigError, match="unknown layout"):
        ExportConfig(layout="tensorrt")


def test_parity_reports_onnx_equal_to_torch_on_real_text(tiny_onnx_dir):
    from export.parity import onnx_logits, onnx_session

    merged = RunLayout.of_folder(tiny_onnx_dir).merged
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    texts = ["an utterly charming film", "the worst two hours of my life"]
    with torch.inference_mode():
        ref = model(**tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits.numpy()
    got = onnx_logits(onnx_session(tiny_onnx_dir / "model.onnx"), tok, texts, 32, 8)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_publishing_the_same_export_twice_adds_no_version(tiny_onnx_dir, tmp_path):
    runs = tiny_onnx_dir.parent.parent
    cfg = ExportConfig(adapter=RunLayout.of(runs, "tiny").adapter, runs_dir=runs, repository=tmp_path / "repo",
                       int8_max_accuracy_drop=100.0, variants=tuple(VARIANT_FILES))
    first = run_export(cfg)
    assert {v: p.name for v, p in first.published.items()} == {"fp32": "1", "int8": "2", "int8-static": "3"}
    assert first.already_published == []
    second = run_export(cfg)
    assert second.published == first.published and sorted(second.already_published) == ["fp32", "int8", "int8-static"]
    assert sorted(p.name for p in (tmp_path / "repo" / "sentiment").iterdir()) == ["1", "2", "3", "config.pbtxt"]
