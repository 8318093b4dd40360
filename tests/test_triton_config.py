"""config.pbtxt for both layouts, parsed back with Triton's model-config protobuf."""

from __future__ import annotations

import json

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export import triton_config
from export.config import ExportConfig
from export.contract import CONTRACT
from export.publish import publish

LABELS = ["negative", "positive"]


def test_python_layout_config_carries_the_contract_and_the_export_settings():
    cfg = ExportConfig(max_batch_size=16, max_queue_delay_us=500, preferred_batch_sizes=(4, 8),
                       instance_count=3, intra_op_threads=2, model_name="reviews", served_versions=0)
    config = triton_config.parse_pbtxt(triton_config.to_pbtxt(triton_config.python_model_config(cfg, LABELS)))

    assert (config.name, config.backend, config.max_batch_size) == ("reviews", "python", 16)
    [text] = config.input
    assert (text.name, text.data_type, list(text.dims)) == (CONTRACT.input_text, mc.TYPE_STRING, [1])
    outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert outputs == {CONTRACT.output_probabilities: (mc.TYPE_FP32, [2]), CONTRACT.output_label: (mc.TYPE_STRING, [1])}
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    [group] = config.instance_group
    assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_CPU, 3)
    assert config.version_policy.HasField("all")
    assert json.loads(config.parameters["labels"].string_value) == LABELS
    assert config.parameters["intra_op_threads"].string_value == "2"
    assert config.parameters["role"].string_value == "classify"


def test_dynamic_batching_off_writes_no_block_and_latest_policy_by_default():
    config = triton_config.python_model_config(ExportConfig(dynamic_batching=False), LABELS)
    text = triton_config.to_pbtxt(config)
    assert "dynamic_batching" not in text
    assert not triton_config.parse_pbtxt(text).HasField("dynamic_batching")
    assert config.version_policy.latest.num_versions == 3  # one export's fp32 and int8, plus int8-static or a tuned version


def _check_ensemble_wiring(configs: dict[str, mc.ModelConfig], model: str) -> None:
    ensemble = configs[model]
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        step_config = configs[step.model_name]
        assert set(step.input_map) == {i.name for i in step_config.input}, step.model_name
        assert set(step.input_map.values()) <= available, f"{step.model_name} reads a tensor nobody produced"
        assert set(step.output_map) <= {o.name for o in step_config.output}, step.model_name
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= available


def test_onnxruntime_layout_publishes_an_ensemble_whose_configs_parse_and_wire_up(tiny_onnx_dir, tmp_path):
    cfg = ExportConfig(repository=tmp_path / "repo", layout="onnxruntime", max_batch_size=32, instance_count=2)
    version_dir = publish(tiny_onnx_dir, "int8", cfg)

    names = triton_config.step_names(cfg.model_name)
    configs = {}
    for model in [cfg.model_name, *names.values()]:
        assert (cfg.repository / model / "1").is_dir()
        configs[model] = triton_config.parse_pbtxt((cfg.repository / model / "config.pbtxt").read_text())
    assert version_dir == cfg.repository / cfg.model_name / "1"
    assert configs[cfg.model_name].platform == "ensemble"
    onnx_config = configs[names["onnx"]]
    assert onnx_config.platform == "onnxruntime_onnx"
    assert {i.name for i in onnx_config.input} == {"input_ids", "attention_mask", "token_type_ids"}
    assert [o.name for o in onnx_config.output] == ["logits"]
    assert onnx_config.parameters["intra_op_thread_count"].string_value == str(cfg.intra_op_threads)
    assert (cfg.repository / names["onnx"] / "1" / CONTRACT.onnx_file).read_bytes() == (tiny_onnx_dir / "model.int8.onnx").read_bytes()
    assert configs[names["tokenize"]].parameters["role"].string_value == "tokenize"
    assert configs[names["postprocess"]].parameters["role"].string_value == "postprocess"
    for name in (names["tokenize"], names["postprocess"], names["onnx"]):
        assert configs[name].max_batch_size == 32 and configs[name].instance_group[0].count == 2
    _check_ensemble_wiring(configs, cfg.model_name)
    assert publish(tiny_onnx_dir, "fp32", cfg).name == "2"  # the next export: version 2 of all four models
    assert all((cfg.repository / model / "2").is_dir() for model in configs)


def test_a_misspelt_field_does_not_parse():
    with pytest.raises(Exception, match="max_batch_sise"):
        triton_config.parse_pbtxt('name: "x" max_batch_sise: 4')


def test_rollback_override_is_json_triton_accepts():
    config = triton_config.python_model_config(ExportConfig(), LABELS)
    config.version_policy.Clear()
    config.version_policy.specific.versions.append(1)
    data = json.loads(triton_config.to_json(config))
    assert data["version_policy"] == {"specific": {"versions": ["1"]}}  # int64 as a JSON string, as proto3 says
    assert data["input"][0]["name"] == CONTRACT.input_text
