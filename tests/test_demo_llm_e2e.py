"""``make demo-llm`` end to end, reduced: the tiny causal LM (tests/causal_helpers.py) fine-tuned,
exported through both gates (30 seeded steps: the same adapter every run), published as fp32 and int8 versions, served by the real tritonserver behind the
real router, and streamed under a real Locust run; the summary it prints has ROUGE-L before and after and
TTFT, ITL and tokens/s per arm."""

from __future__ import annotations

import json

import pytest

from workflows.demo_llm import DemoLLMConfig, format_summary, run_demo_llm

pytestmark = pytest.mark.e2e


def test_demo_llm_trains_exports_serves_and_streams_per_arm(tiny_llama_dir, tmp_path):
    cfg = DemoLLMConfig(model=tiny_llama_dir, runs_dir=tmp_path / "runs", repository=tmp_path / "repository",
                        time_budget_s=300, max_steps=30, scored_examples=12, parity_prompts=2, rate=4, run_time="4s", max_tokens=4,
                        out_dir=tmp_path / "reports")
    summary = run_demo_llm(cfg, tmp_path / "reports" / "demo-llm")
    assert sorted((tmp_path / "repository" / cfg.model_name).glob("[0-9]*")) == [
        tmp_path / "repository" / cfg.model_name / v for v in ("1", "2")]
    t = summary["training"]
    assert t["examples"] == 12 and 0 <= t["rouge_l_before"] <= 100 and 0 <= t["rouge_l_after"] <= 100
    assert set(summary["arms"]) == {"control", "treatment"}
    for arm, variant, version in (("control", "fp32", "1"), ("treatment", "int8", "2")):
        a = summary["arms"][arm]
        assert (a["variant"], a["version"]) == (variant, version)
        assert a["completions"] > 0 and a["failures"] == 0 and a["tokens_per_s"] > 0
        assert 0 < a["ttft_p50_ms"] <= a["ttft_p99_ms"]
    assert set(summary["seconds_by_step"]) == {"train", "export", "serving_start", "load", "stop"}
    assert sum(summary["seconds_by_step"].values()) <= summary["seconds"] + 1
    text = format_summary(summary)
    assert text.startswith(f"training: ROUGE-L {t['rouge_l_before']:.1f} -> {t['rouge_l_after']:.1f} on 12 held-out")
    assert "| control | fp32 (v1) |" in text and "| treatment | int8 (v2) |" in text
    saved = json.loads((tmp_path / "reports" / "demo-llm" / "summary.json").read_text())
    assert saved == summary
    assert (tmp_path / "reports" / "demo-llm" / "router.log").is_file()
    # a second run reuses the adapter, the export and the published versions
    again = run_demo_llm(cfg, tmp_path / "reports" / "demo-llm-2")
    assert again["training"] == t and len(list((tmp_path / "repository" / cfg.model_name).glob("[0-9]*"))) == 2
