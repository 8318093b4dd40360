"""End to end on the tiny causal LM: the generation bench (serving.llm_bench) with every path and peer that runs
here, started and stopped by the bench (the real tritonserver; the transformers baseline and onnxruntime-genai
fp32/int8/int4 as OpenAI-compatible servers); and the official ``openai`` client against a peer server."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest

from export.decoding import SamplingParams
from export.generate import Generator
from serving import llm_bench
from serving.llm_bench_report import GOALS
from serving.llm_peers import PEERS, PeerServer

pytestmark = pytest.mark.e2e

ARM_KEYS = {"path", "batching", "concurrency", "tokens_per_s", "tokens_per_s_by_phase", "tokens", "requests",
            "tokens_per_request", "ttft", "itl", "tpot", "e2e", "ttft_p50_ms_by_phase", "goodput_per_s",
            "good_requests"}
SUMMARY_KEYS = {"n", "mean_ms", "p50_ms", "p90_ms", "p99_ms"}
GOAL_KEYS = {"goal", "op", "target", "value", "met", "by_path", "note"}


def test_quick_bench_runs_every_peer_with_exact_counts_and_the_goals(tiny_causal_onnx_dir, tmp_path):
    out = tmp_path / "bench-llm"
    assert llm_bench.main(["--onnx-dir", str(tiny_causal_onnx_dir), "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    quick = llm_bench.QUICK
    paths = ["in-process", "http", "grpc", "router", *PEERS]
    assert report["config"]["quick"] is True and report["config"]["new_tokens"] == quick["new_tokens"]
    assert set(report["arms"]) == {f"{p} / {'none' if p in PEERS else 'continuous'} / {c}"
                                   for p in paths for c in quick["concurrency"]}
    for row in report["arms"].values():
        assert set(row) == ARM_KEYS and all(set(row[k]) == SUMMARY_KEYS for k in ("ttft", "itl", "tpot", "e2e"))
        completions = quick["phases"] * row["concurrency"] * quick["requests"]
        assert row["requests"] == completions and row["tokens_per_request"] == [quick["new_tokens"]] * 2
        assert row["tokens"] == completions * quick["new_tokens"] and row["tpot"]["n"] == completions
        assert row["ttft"]["n"] == completions and 0 < row["ttft"]["p50_ms"] <= row["ttft"]["p99_ms"]
        assert 0 < row["itl"]["n"] <= completions * (quick["new_tokens"] - 1)
        assert len(row["tokens_per_s_by_phase"]) == quick["phases"] and row["tokens_per_s"] > 0
        if row["path"] in ("in-process", "http", "grpc", "router", "ortgenai-fp32"):  # a chunk per token with text
            assert row["itl"]["n"] == completions * (quick["new_tokens"] - 1), row["path"]
    ratios = report["ratios"]
    assert list(ratios) == [g.key for g in GOALS] and all(set(g) == GOAL_KEYS for g in ratios.values())
    for key in ("served_vs_in_process_c1", "served_vs_transformers_c8"):
        assert set(ratios[key]["by_path"]) == {"http", "grpc", "router"} and ratios[key]["value"] > 0
        assert ratios[key]["met"] in (True, False) and ratios[key]["note"] is None
        assert ratios[key]["value"] == min(v["value"] for v in ratios[key]["by_path"].values())  # the worst path's
    interleaved = report["ttft_interleaved_ms"]  # every served path, each round paired with in-process
    assert set(interleaved) == {"http", "grpc", "router"}
    assert all(len(p["ttft_ms"]) == len(p["reference_ms"]) == quick["ttft_rounds"] and min(p["ttft_ms"]) > 0
               for p in interleaved.values())
    assert [(d["path"], d["vs"]) for d in report["ttft_differences"]] == \
        [("http", "in-process"), ("grpc", "in-process"), ("router", "in-process")]
    router = ratios["router_ttft_p50_over_in_process_ms"]
    pairs = interleaved["router"]
    diffs = [a - b for a, b in zip(pairs["ttft_ms"], pairs["reference_ms"], strict=True)]
    assert router["note"] is None and router["value"] == pytest.approx(float(np.median(diffs)), abs=1e-3)
    assert router["by_path"]["router"]["requests"] == quick["ttft_rounds"] and router["met"] == (router["value"] <= 5.0)
    markdown = (out / "bench.md").read_text()
    assert markdown.count("| transformers | none |") == 2 and "Goals" in markdown
    assert "each path paired with in-process" in markdown
    for name in ("tritonserver.log", "router-continuous.log", "transformers.log", "ortgenai-int4-build.log", "inter_token_latency_8_streams.png"):
        assert (out / name).is_file(), name


def test_bench_without_peers_reports_the_batching_gain(tiny_causal_onnx_dir, tmp_path):
    out = tmp_path / "bench-llm"
    assert llm_bench.main(["--onnx-dir", str(tiny_causal_onnx_dir), "--concurrency", "1,3", "--new-tokens", "5",
                           "--requests", "2", "--phases", "2", "--ttft-rounds", "6", "--peers", "", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    arms = report["arms"]
    assert len(arms) == 4 * 2 * 2  # paths x batching modes x concurrency levels
    for row in arms.values():
        completions = 2 * row["concurrency"] * 2  # phases x streams x requests
        assert row["tokens"] == completions * 5 and row["ttft"]["n"] == completions
        assert row["itl"]["n"] == completions * 4 and 0 < row["ttft"]["p50_ms"] <= row["ttft"]["p99_ms"]
    assert {(g["path"], g["concurrency"]) for g in report["batching_gain"]} == \
        {(t, c) for t in ("in-process", "http", "grpc", "router") for c in (1, 3)}
    assert report["merged_dir"] is None
    assert report["ratios"]["served_vs_transformers_c8"]["value"] is None  # neither 8 streams nor the baseline
    assert report["ratios"]["router_ttft_p50_over_in_process_ms"]["value"] is not None
    assert all(len(p["ttft_ms"]) == 6 for p in report["ttft_interleaved_ms"].values())


def test_the_official_openai_client_streams_from_the_baseline_peer(tiny_causal_onnx_dir, tmp_path):
    reference = Generator.from_folder(tiny_causal_onnx_dir)
    row = json.loads((tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()[0])
    messages = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}]
    expected = reference.generate(reference.encode(row["prompt"]), SamplingParams(max_tokens=9))
    with PeerServer("transformers", "transformers", tiny_causal_onnx_dir.parent / "merged", "tiny", 1,
                    tmp_path / "peer.log") as peer:
        client = openai.OpenAI(base_url=f"{peer.url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=9, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
        assert chunks[-1].usage.completion_tokens == len(expected.token_ids)
        assert chunks[-1].usage.prompt_tokens == len(reference.encode(row["prompt"]))
        whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=9)
        assert whole.choices[0].message.content == expected.text
        with pytest.raises(openai.BadRequestError, match="max_tokens must be an integer >= 1, got 0"):
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=0)
        with pytest.raises(openai.NotFoundError, match="'gpt-4o' does not exist"):
            client.chat.completions.create(model="gpt-4o", messages=messages)
