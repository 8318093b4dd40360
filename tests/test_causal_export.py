"""A causal LM through export on the tiny random Llama: merge, ONNX with the KV cache, both gates, publish."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from export import triton_config
from export.__main__ import main as export_main
from export.config import ExportConfig
from export.errors import ConfigError, GateError, InputError, PublishError
from export.generate import Generator
from export.parity_causal import _gate, format_causal_table
from export.pipeline import run_export
from export.publish import publish
from export.publish_causal import publish_causal


def test_fp32_decodes_torchs_tokens_and_int8_is_scored(tiny_causal_onnx_dir):
    report = json.loads((tiny_causal_onnx_dir / "parity.json").read_text())
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    assert report["task"] == "causal-lm" and report["parity_prompts"] == 8 and len(fp32["prompts"]) == 8
    assert all(p["tokens_equal"] and p["prompt_ids_equal"] and p["first_divergence"] is None for p in fp32["prompts"])
    assert all(p["onnx_tokens"] == p["torch_tokens"] > 0 for p in fp32["prompts"])
    assert 0 < fp32["max_abs_logit_diff"] <= 1e-3 and fp32["publishable"]
    assert {c["name"] for c in int8["checks"]} == {"rouge_l_drop_points", "perplexity_increase", "fp32_export_passed"}
    assert int8["perplexity"] != fp32["perplexity"]  # really quantized: MatMulNBits, no per-tensor activations
    ops = {n.op_type for n in onnx.load(str(tiny_causal_onnx_dir / "model.int8.onnx")).graph.node}
    assert "MatMulNBits" in ops and "DynamicQuantizeLinear" not in ops
    generation = json.loads((tiny_causal_onnx_dir / "generation.json").read_text())
    assert generation == {"eos_token_ids": [2], "pad_token_id": 2, "max_context": 512}
    table = format_causal_table(report)
    assert "8/8" in table and "PASS, publishable" in table


def _figures(rouge: float, perplexity: float) -> dict:
    return {"rouge_l": rouge, "perplexity": perplexity}


@pytest.mark.parametrize(("int8", "failed"), [
    (_figures(48.1, 10.9), []),
    (_figures(47.9, 10.0), ["rouge_l_drop_points"]),
    (_figures(50.0, 11.1), ["perplexity_increase"]),
])
def test_int8_gate_budgets(int8, failed):
    fp32 = {"prompts": [{"tokens_equal": True, "prompt_ids_equal": True, "max_abs_logit_diff": 1e-5}], **_figures(50.0, 10.0)}
    _gate(fp32, int8, ExportConfig(task="causal-lm"))
    assert fp32["publishable"]
    assert [c["name"] for c in int8["checks"] if not c["passed"]] == failed
    assert int8["publishable"] == (not failed)


def test_one_differing_token_fails_fp32_and_everything_after_it():
    fp32 = {"prompts": [{"tokens_equal": True, "prompt_ids_equal": True, "max_abs_logit_diff": 1e-5},
                        {"tokens_equal": False, "prompt_ids_equal": True, "max_abs_logit_diff": 2e-5}], **_figures(50, 10)}
    int8 = _figures(50.0, 10.0)
    _gate(fp32, int8, ExportConfig(task="causal-lm"))
    tokens = fp32["checks"][0]
    assert not fp32["publishable"] and tokens["name"] == "prompts_with_equal_tokens" and not tokens["passed"]
    assert (tokens["value"], tokens["threshold"]) == (1, 2)
    assert not int8["publishable"]  # int8 is judged against a passing fp32 only


def test_a_failed_gate_publishes_nothing(tiny_causal_adapter_dir, tmp_path, capsys):
    repository = tmp_path / "repo"
    code = export_main(["--adapter", str(tiny_causal_adapter_dir), "--runs-dir", str(tmp_path / "runs"),
                        "--repository", str(repository), "--generation-max-new-tokens", "12", "--logit-max-abs-diff", "0"])
    out = capsys.readouterr()
    assert code == 1 and "FAIL: max_abs_logit_diff=" in out.out and "nothing was published" in out.err
    assert not repository.exists()


def test_publish_makes_self_contained_versions(tiny_causal_onnx_dir, tmp_path):
    cfg = ExportConfig(task="causal-lm", repository=tmp_path / "repo")
    v1, v2 = publish_causal(tiny_causal_onnx_dir, "fp32", cfg), publish_causal(tiny_causal_onnx_dir, "int8", cfg)
    assert (v1.name, v2.name) == ("1", "2") and v1.parent.name == "verdict-llm"
    config = triton_config.parse_pbtxt((v1.parent / "config.pbtxt").read_text())
    assert config.model_transaction_policy.decoupled and config.backend == "python"
    assert {"model.onnx", "tokenizer.json", "generation.json", "parity.json", "provenance.json", "model.py",
            "runtime"} <= {p.name for p in v1.iterdir()}
    provenance = json.loads((v2 / "provenance.json").read_text())
    assert provenance["task"] == "causal-lm" and provenance["variant"] == "int8"
    prompt = json.loads((tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()[0])["prompt"]
    served, exported = Generator.from_folder(v1), Generator.from_folder(tiny_causal_onnx_dir)
    assert served.generate(served.encode(prompt)).token_ids == exported.generate(exported.encode(prompt)).token_ids


def test_a_refused_variant_is_not_published(tiny_causal_onnx_dir, tmp_path):
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(tiny_causal_onnx_dir, onnx_dir)
    report = json.loads((onnx_dir / "parity.json").read_text())
    report["variants"]["int8"]["checks"][1]["passed"] = False
    report["variants"]["int8"]["publishable"] = False
    (onnx_dir / "parity.json").write_text(json.dumps(report))
    cfg = ExportConfig(task="causal-lm", repository=tmp_path / "repo")
    with pytest.raises(GateError, match=r"variant 'int8' .* failed the gate and is not published: perplexity_increase"):
        publish_causal(onnx_dir, "int8", cfg)
    assert not cfg.repository.exists()


def test_classifier_and_causal_versions_never_share_a_model(tiny_causal_onnx_dir, tiny_onnx_dir, tmp_path):
    repo = tmp_path / "repo"
    publish_causal(tiny_causal_onnx_dir, "fp32", ExportConfig(task="causal-lm", repository=repo, model_name="m"))
    with pytest.raises(PublishError, match="holds causal-lm versions"):
        publish(tiny_onnx_dir, "fp32", ExportConfig(repository=repo, model_name="m"))
    publish(tiny_onnx_dir, "fp32", ExportConfig(repository=repo, model_name="c"))
    with pytest.raises(PublishError, match="holds classification versions"):
        publish_causal(tiny_causal_onnx_dir, "fp32", ExportConfig(task="causal-lm", repository=repo, model_name="c"))
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]


def test_config_refuses_what_a_causal_lm_cannot_do(tiny_causal_adapter_dir, tiny_adapter_dir):
    assert ExportConfig(adapter=tiny_causal_adapter_dir).task == "causal-lm"
    assert ExportConfig(adapter=tiny_causal_adapter_dir).model_name == "verdict-llm"
    with pytest.raises(ConfigError) as info:
        ExportConfig(adapter=tiny_causal_adapter_dir, variants=("fp32", "int8-static"), repository="s3://b/p",
                     int8_scheme="int4")
    assert "unknown int8_scheme 'int4'; expected one of: weight-only, dynamic" in str(info.value)
    assert "int8-static calibrates encoder inputs: classifiers only" in str(info.value)
    assert "a causal LM publishes to a local folder only" in str(info.value)
    with pytest.raises(InputError, match="--task causal-lm does not match the adapter"):
        run_export(ExportConfig(adapter=tiny_adapter_dir, task="causal-lm", publish=False))
