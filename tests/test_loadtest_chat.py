"""The chat workload: Locust, headless for a few seconds, streaming chat completions from a real
OpenAI-compatible server (the transformers peer of ``serving.llm_peers`` on the tiny Llama), and the report's
figures checked against vLLM's definitions on the chunks each completion logged."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from loadtests.chat import read_streams
from loadtests.config import LoadTestConfig, LoadTestError
from loadtests.run import run_loadtest, user_class_of
from serving.llm_peers import PeerServer
from tunestack.bench.streams import SLO, goodput

MODEL = "tiny"
MAX_TOKENS = 6


def test_chat_config_picks_its_users_and_prompts_and_refuses_what_it_cannot_do():
    cfg = LoadTestConfig(workload="chat", target="openai")
    assert cfg.texts.endswith("runs/llm/merged/heldout.jsonl") and user_class_of(cfg) == "ChatUser"
    assert user_class_of(LoadTestConfig(workload="chat", arrival_rate=2)) == "ChatOpenLoopUser"
    assert user_class_of(LoadTestConfig()) == "ClosedLoopUser"
    with pytest.raises(LoadTestError) as e:
        LoadTestConfig(workload="chat", target="triton", max_tokens=0, slo_ttft_ms=0)
    for expected in ("workload chat streams OpenAI chat completions over HTTP to target router or openai",
                     "max_tokens must be >= 1, got 0", "slo_ttft_ms and slo_tpot_ms must be > 0"):
        assert expected in str(e.value)
    with pytest.raises(LoadTestError, match="target openai serves workload chat only"):
        LoadTestConfig(target="openai")
    assert LoadTestConfig.from_settings({"workload": "chat", "ignore-eos": "true"}).ignore_eos is True


@pytest.fixture(scope="module")
def peer(tiny_causal_onnx_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("peer") / "transformers.log"
    with PeerServer("transformers", "transformers", tiny_causal_onnx_dir.parent / "merged", MODEL, 1, log) as server:
        yield server


@pytest.mark.e2e
def test_a_streaming_locust_run_records_vllms_metrics_per_arm(peer, tiny_causal_onnx_dir, tmp_path):
    cfg = LoadTestConfig(workload="chat", target="openai", host=peer.url, model=MODEL, users=2, run_time="4s",
                         texts=str(tiny_causal_onnx_dir / "heldout.jsonl"), max_tokens=MAX_TOKENS, ignore_eos=True,
                         slo_ttft_ms=60_000, slo_tpot_ms=60_000, triton_metrics_url="none", out_dir=str(tmp_path))
    result = run_loadtest(cfg)
    with open(result.folder / "locust_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    # one row per arm (the peer names no arm: the model), type chat, every completion a success
    assert {n for n, r in rows.items() if r["Type"] == "chat"} == {MODEL}
    row = rows[MODEL]
    completions = int(row["Request Count"])
    assert completions > 0 and row["Failure Count"] == "0" and result.exit_code == 0
    assert float(row["Average Content Size"]) == MAX_TOKENS  # response_length: the output tokens

    streams = read_streams(result.folder / "locust")
    assert len(streams) == completions and all(s.ok and s.name == MODEL for s in streams)
    for s in streams:
        r = s.record
        assert r.output_tokens == MAX_TOKENS  # the server's usage: exactly max_tokens with ignore_eos
        assert len(r.content_s) >= 1 and r.content_s == tuple(sorted(r.content_s)) and r.last_s >= r.content_s[-1]
        assert r.ttft_s == r.content_s[0] > 0  # sent -> the first chunk with content
        assert np.allclose(r.itl_s, np.diff(r.content_s)) and len(r.itl_s) == len(r.content_s) - 1
        assert r.tpot_s == pytest.approx((r.last_s - r.content_s[0]) / (MAX_TOKENS - 1))

    summary = json.loads((result.folder / "summary.json").read_text())
    arm = summary["generation"]["arms"][MODEL]
    wall = summary["generation"]["wall_s"]
    assert arm["requests"] == completions and arm["failures"] == 0
    assert arm["output_tokens"] == MAX_TOKENS * completions
    assert arm["tokens_per_s"] == pytest.approx(MAX_TOKENS * completions / wall, rel=1e-3)
    assert arm["ttft"]["n"] == completions and arm["tpot"]["n"] == completions
    assert arm["itl"]["n"] == sum(len(s.record.content_s) - 1 for s in streams)
    ttfts = sorted(s.record.ttft_s * 1000 for s in streams)
    assert arm["ttft"]["p50_ms"] == pytest.approx(ttfts[int(np.ceil(0.5 * len(ttfts))) - 1], abs=1e-3)
    # every completion met the generous SLO; none meets a 1 microsecond TTFT
    assert arm["goodput_rps"] == pytest.approx(completions / wall, rel=1e-3)
    records = [s.record for s in streams]
    assert goodput(records, SLO(ttft_ms=0.001), wall) == 0
    for image in ("ttft_cdf.png", "itl_cdf.png", "tokens_over_time.png", "latency_cdf.png"):
        assert (result.folder / image).stat().st_size > 10_000, image
    assert set(summary["plots"].values()) >= {"ttft_cdf.png", "itl_cdf.png", "tokens_over_time.png"}
    report = result.report.read_text()
    assert "## Streamed completions per arm (vLLM's definitions)" in report and f"| {MODEL} | TTFT |" in report


@pytest.mark.e2e
def test_a_broken_request_is_a_failure_of_its_row(peer, tiny_causal_onnx_dir, tmp_path):
    # temperature 5 is outside the OpenAI range: the peer answers 400, each completion fails
    cfg = LoadTestConfig(workload="chat", target="openai", host=peer.url, model=MODEL, users=1, run_time="2s",
                         texts=str(tiny_causal_onnx_dir / "heldout.jsonl"), max_tokens=2, temperature=5,
                         triton_metrics_url="none", out_dir=str(tmp_path))
    result = run_loadtest(cfg)
    with open(result.folder / "locust_stats.csv", newline="") as f:
        row = {r["Name"]: r for r in csv.DictReader(f)}[MODEL]
    assert int(row["Request Count"]) > 0 and row["Failure Count"] == row["Request Count"]
    failures = json.loads((result.folder / "summary.json").read_text())["failures"]
    assert "GenerationRejected: 400" in failures[0]["error"] and "temperature" in failures[0]["error"]
    assert result.exit_code == 1


@pytest.fixture(scope="module")
def router_stack(tiny_causal_onnx_dir, tmp_path_factory):
    """Triton serving the tiny causal LM's fp32 (v1) and int8 (v2), the router splitting 50/50 between them."""
    from experiments.spec import write_experiment
    from export.config import ExportConfig
    from export.contract import GENERATIVE
    from export.publish_causal import publish_causal
    from serving.router.process import RouterProcess
    from serving.triton import TritonServer

    tmp = tmp_path_factory.mktemp("chat-stack")
    model = GENERATIVE.default_model_name
    cfg = ExportConfig(task="causal-lm", repository=tmp / "repository", model_name=model, served_versions=0)
    for variant in ("fp32", "int8"):
        publish_causal(tiny_causal_onnx_dir, variant, cfg)
    experiment = write_experiment(tmp / "ab.yaml", "verdict-ab", [("control", "1", 50), ("treatment", "2", 50)],
                                  model, fallback="control")
    with TritonServer(cfg.repository, models=[model], startup_timeout=120) as triton, \
            RouterProcess(experiment, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url,
                          log_file=tmp / "router.log") as router:
        yield {"triton": triton, "router": router}


@pytest.mark.e2e
def test_streaming_through_the_router_gives_a_row_and_figures_per_arm(router_stack, tiny_causal_onnx_dir, tmp_path):
    cfg = LoadTestConfig(workload="chat", target="router", experiment="verdict-ab", host=router_stack["router"].url,
                         users=4, run_time="5s", texts=str(tiny_causal_onnx_dir / "heldout.jsonl"), max_tokens=5,
                         ignore_eos=True, sticky_check="fail", triton_metrics_url=router_stack["triton"].metrics_url,
                         out_dir=str(tmp_path))
    result = run_loadtest(cfg)
    with open(result.folder / "locust_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert {n for n, r in rows.items() if r["Type"] == "chat"} == {"control", "treatment"}, rows.keys()
    for arm in ("control", "treatment"):  # every completion named its arm, and every user kept it
        assert int(rows[arm]["Request Count"]) > 0 and rows[arm]["Failure Count"] == "0", rows[arm]
    streams = read_streams(result.folder / "locust")
    generation = json.loads((result.folder / "summary.json").read_text())["generation"]["arms"]
    for arm in ("control", "treatment"):
        mine = [s for s in streams if s.name == arm]
        assert generation[arm]["requests"] == len(mine) == int(rows[arm]["Request Count"])
        assert generation[arm]["output_tokens"] == 5 * len(mine)
        assert all(s.record.output_tokens == 5 and s.record.ttft_s > 0 for s in mine)
    # Triton saw, per version, exactly the completions Locust counted per arm
    triton = {m["version"]: m["requests"] for m in json.loads((result.folder / "triton_metrics.json").read_text())["models"]}
    assert triton == {"1": int(rows["control"]["Request Count"]), "2": int(rows["treatment"]["Request Count"])}
    assert "| treatment | ITL |" in result.report.read_text() and result.exit_code == 0
