"""export.publish: numbered, self-contained, atomic versions; a refused publish changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from transformers import AutoTokenizer

from export import publish as publish_module
from export.config import ExportConfig
from export.contract import CONTRACT, VARIANT_FILES
from export.errors import GateError, InputError, PublishError
from export.publish import publish
from export.triton_model.model import RequestError, TextClassifier, decode_texts, softmax
from tests.conftest import export_settings
from tunestack.layout import RunLayout


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 of its bytes ('dir' for folders): byte-for-byte comparison."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def cfg(tmp_path: Path) -> ExportConfig:
    return ExportConfig(repository=tmp_path / "model_repository", max_batch_size=8)


@pytest.fixture
def failing_gate(tiny_onnx_dir: Path, tmp_path: Path) -> Path:
    """A copy of the export folder whose int8 variant failed the parity gate."""
    copy = shutil.copytree(tiny_onnx_dir, RunLayout.of(tmp_path / "runs", "bad").onnx)
    parity = json.loads((copy / CONTRACT.parity_file).read_text())
    parity["variants"]["int8"]["publishable"] = False
    parity["variants"]["int8"]["checks"] = [{"name": "accuracy_drop_points", "value": 3.1, "threshold": 1.0,
                                             "passed": False}]
    (copy / CONTRACT.parity_file).write_text(json.dumps(parity))
    return copy


def test_versions_are_numbered_self_contained_and_carry_provenance(tiny_onnx_dir, cfg):
    v1 = publish(tiny_onnx_dir, "fp32", cfg)
    v2 = publish(tiny_onnx_dir, "int8", cfg)

    assert (v1.name, v2.name) == ("1", "2")
    assert sorted(p.name for p in cfg.repository.iterdir()) == [cfg.model_name]  # no temporary folder left
    assert sorted(p.name for p in cfg.repository.parent.iterdir()) == [cfg.repository.name]
    for version_dir, variant in ((v1, "fp32"), (v2, "int8")):
        files = {p.name for p in version_dir.iterdir()}
        assert {"model.py", CONTRACT.onnx_file, "tokenizer.json", "vocab.txt", CONTRACT.label_map_file,
                CONTRACT.parity_file, "provenance.json", "serving.json"} <= files
        served = version_dir / CONTRACT.onnx_file
        assert served.read_bytes() == (tiny_onnx_dir / VARIANT_FILES[variant]).read_bytes()
        provenance = json.loads((version_dir / "provenance.json").read_text())
        assert provenance["onnx_sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
        assert provenance["variant"] == variant and provenance["version"] == int(version_dir.name)
        assert provenance["source"]["onnx_dir"] == str(tiny_onnx_dir.resolve())
        assert provenance["parity"]["publishable"] is True
        assert provenance["export_config"]["max_batch_size"] == 8
        assert json.loads((version_dir / "serving.json").read_text())["max_length"] == provenance["max_length"]
    assert (cfg.repository / cfg.model_name / "config.pbtxt").is_file()


def test_publishing_again_adds_a_version_and_never_touches_existing_ones(tiny_onnx_dir, cfg):
    publish(tiny_onnx_dir, "fp32", cfg)
    publish(tiny_onnx_dir, "int8", cfg)
    model_dir = cfg.repository / cfg.model_name
    before = {k: v for k, v in snapshot(model_dir).items() if k != "config.pbtxt"}
    shutil.rmtree(model_dir / "1")  # a gap below does not make numbers go down
    before = {k: v for k, v in before.items() if not k.startswith("1")}

    v3 = publish(tiny_onnx_dir, "fp32", ExportConfig(repository=cfg.repository, max_batch_size=16))

    assert v3.name == "3"
    after = snapshot(model_dir)
    assert {k: after[k] for k in before} == before
    assert "max_batch_size: 16" in (model_dir / "config.pbtxt").read_text()


def test_a_failed_gate_leaves_the_repository_byte_for_byte_unchanged(tiny_onnx_dir, failing_gate, cfg):
    publish(tiny_onnx_dir, "fp32", cfg)
    before = snapshot(cfg.repository)

    with pytest.raises(GateError, match=r"int8.*failed the parity gate.*accuracy_drop_points = 3.1 \(threshold 1.0\)"):
        publish(failing_gate, "int8", cfg)

    assert snapshot(cfg.repository) == before


def test_a_failed_gate_does_not_even_create_the_repository(failing_gate, cfg):
    with pytest.raises(GateError):
        publish(failing_gate, "int8", cfg)
    assert not cfg.repository.exists()


@pytest.mark.parametrize("fail_on", ["copy", "install"])
def test_an_interrupted_publish_leaves_the_repository_as_it_was(tiny_onnx_dir, cfg, monkeypatch, fail_on):
    publish(tiny_onnx_dir, "fp32", cfg)
    before = snapshot(cfg.repository)
    if fail_on == "copy":  # interrupted while the version is being built (Ctrl-C half-way through)
        calls = []

        def copy2(src, dst, **kwargs):
            calls.append(src)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return shutil.copy2(src, dst, **kwargs)

        monkeypatch.setattr(publish_module.shutil, "copy2", copy2)
        expected = KeyboardInterrupt
    else:  # the version folder is already in place when replacing config.pbtxt fails: it is moved back out
        def replace(src, dst):
            if Path(dst).name == "config.pbtxt":
                raise OSError(28, "No space left on device")
            return os.rename(src, dst)

        monkeypatch.setattr(publish_module.os, "replace", replace)
        expected = PublishError

    with pytest.raises(expected):
        publish(tiny_onnx_dir, "int8", ExportConfig(repository=cfg.repository, max_batch_size=4))

    assert snapshot(cfg.repository) == before
    assert not [p.name for p in cfg.repository.parent.iterdir() if "tmp-publish" in p.name]


def test_refuses_an_incomplete_export_folder_and_a_different_layout(tiny_onnx_dir, cfg, tmp_path):
    partial = shutil.copytree(tiny_onnx_dir, tmp_path / "partial")
    (partial / "model.int8.onnx").unlink()
    with pytest.raises(InputError, match="missing model.int8.onnx"):
        publish(partial, "int8", cfg)
    publish(tiny_onnx_dir, "fp32", cfg)
    before = snapshot(cfg.repository)
    with pytest.raises(PublishError, match="'python' layout"):
        publish(tiny_onnx_dir, "fp32", ExportConfig(repository=cfg.repository, layout="onnxruntime"))
    assert snapshot(cfg.repository) == before


def test_published_version_tokenizes_and_classifies_like_training(tiny_onnx_dir, cfg):
    """The served code path (model.py, in-process) against the training tokenizer + ONNX Runtime."""
    version_dir = publish(tiny_onnx_dir, "fp32", cfg)
    texts = ["a fine film", "A DULL, overlong mess!", "word " * 4000]  # the last one is truncated
    labels_, max_length = export_settings(tiny_onnx_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir)
    features = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(tiny_onnx_dir / CONTRACT.onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    expected = softmax(session.run(None, {n: features[n].astype(np.int64) for n in names})[0])

    classifier = TextClassifier(version_dir)
    probabilities, labels = classifier.predict(texts)

    assert classifier.tokenizer(texts)["input_ids"].shape == (3, max_length)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert labels == [labels_[i] for i in expected.argmax(-1)]


@pytest.mark.parametrize(("value", "message"), [
    (b"", "empty string"), (b"   ", "empty string"), (b"\xff\xfeabc", "not valid UTF-8"),
])
def test_bad_text_is_a_request_error(value, message):
    with pytest.raises(RequestError, match=message):
        decode_texts(np.array([[b"fine"], [value]], dtype=object))
    assert decode_texts(np.array([["caf\u00e9".encode()]], dtype=object)) == ["caf\u00e9"]


def test_default_version_prefers_the_newest_dynamic_int8(tmp_path):
    """Benches and tune pick the newest dynamic-int8 version (fastest on CPU), else the newest version."""
    from export.publish import PROVENANCE_FILE, default_version

    model = tmp_path / "m"
    assert default_version(model) is None
    for version, variant in [(1, "fp32"), (2, "int8"), (3, "int8-static"), (4, "int8"), (5, "int8-static")]:
        (model / str(version)).mkdir(parents=True)
        (model / str(version) / PROVENANCE_FILE).write_text(json.dumps({"variant": variant}))
    assert default_version(model) == 4
    assert default_version(model, "fp32") == 1
    assert default_version(model, "none-such") == 5
