"""vLLM's streaming definitions (tunestack.bench.streams) on hand-made timestamps, and the generation bench's
rows and goals (serving.llm_bench_report) on hand-made records."""

from __future__ import annotations

import pytest

from serving.llm_bench_paths import interleaved_ttft
from serving.llm_bench_report import (
    GOALS,
    NO_TTFT_PAIRS,
    arm_name,
    batching_gain,
    goals,
    summarize_arm,
    ttft_differences,
)
from tunestack.bench.streams import (
    SLO,
    StreamRecord,
    StreamTimer,
    goodput,
    output_tokens_per_s,
    stream_figures,
)


def record(sent: float, content: list[float], last: float | None = None, tokens: int | None = None) -> StreamRecord:
    return StreamRecord(sent, tuple(content), content[-1] if last is None else last,
                        len(content) if tokens is None else tokens)


def test_ttft_itl_e2e_and_tpot_follow_vllms_definitions():
    r = record(10.0, [10.5, 10.7, 11.0, 11.6], last=11.7, tokens=6)  # 6 tokens in 4 chunks, a usage chunk last
    assert r.ttft_s == pytest.approx(0.5)
    assert r.itl_s.tolist() == pytest.approx([0.2, 0.3, 0.6])
    assert r.e2e_s == pytest.approx(1.7)
    assert r.tpot_s == pytest.approx((1.7 - 0.5) / 5)  # (e2e - TTFT) / (output tokens - 1), not per chunk


def test_one_token_has_no_tpot_and_no_content_has_no_ttft():
    assert record(0.0, [0.3], tokens=1).tpot_s is None
    empty = StreamRecord(0.0, (), 0.4, 0)
    assert empty.ttft_s is None and empty.tpot_s is None and empty.itl_s.size == 0


def test_the_timer_counts_only_chunks_with_content_for_ttft_and_itl():
    timer = StreamTimer(sent_s=1.0)
    timer.chunk(False, at=1.1)  # the role chunk: no content
    timer.chunk(True, at=1.4)
    timer.chunk(True, at=1.9)
    timer.chunk(False, at=2.0)  # finish / usage chunk: ends the stream, no content
    r = timer.finish(output_tokens=3)
    assert r.ttft_s == pytest.approx(0.4) and r.itl_s.tolist() == pytest.approx([0.5])
    assert r.e2e_s == pytest.approx(1.0) and r.output_tokens == 3
    with pytest.raises(ValueError, match="without a chunk"):
        StreamTimer().finish()
    counted = StreamTimer(sent_s=0.0)
    counted.chunk(True, at=0.1)
    counted.chunk(True, at=0.2)
    assert counted.finish().output_tokens == 2  # no server count: the chunks with content


def test_goodput_counts_requests_meeting_every_slo_per_second():
    fast = record(0.0, [0.1, 0.2, 0.3])  # TTFT 100 ms, TPOT 100 ms
    slow_start = record(0.0, [0.9, 1.0, 1.1])  # TTFT 900 ms
    slow_steps = record(0.0, [0.1, 0.6, 1.1])  # TPOT 500 ms
    one_token = record(0.0, [0.2], tokens=1)  # TPOT counts 0
    no_content = StreamRecord(0.0, (), 0.1, 0)
    slo = SLO(ttft_ms=500, tpot_ms=200)
    assert [slo.met(r) for r in (fast, slow_start, slow_steps, one_token, no_content)] == [True, False, False, True,
                                                                                           False]
    assert goodput([fast, slow_start, slow_steps, one_token], slo, wall_s=2.0) == pytest.approx(1.0)
    assert SLO(e2e_ms=1000).met(slow_start) is False and SLO(e2e_ms=1100).met(slow_start) is True
    assert SLO().met(slow_steps) is True  # no limit given: nothing checked


def test_slo_and_rates_refuse_bad_values():
    with pytest.raises(ValueError) as e:
        SLO(ttft_ms=0, tpot_ms=-1)
    assert "ttft_ms must be > 0" in str(e.value) and "tpot_ms must be > 0" in str(e.value)
    with pytest.raises(ValueError, match="wall_s"):
        output_tokens_per_s([record(0, [1])], 0)


def test_stream_figures_pool_every_gap_and_summarize_in_ms():
    records = [record(0.0, [0.1, 0.3, 0.6]), record(1.0, [1.2, 1.3], tokens=4)]
    figures = stream_figures(records)
    assert figures["requests"] == 2 and figures["output_tokens"] == 7
    assert figures["ttft"]["n"] == 2 and figures["ttft"]["p50_ms"] == pytest.approx(100)
    assert figures["itl"]["n"] == 3 and figures["itl"]["p99_ms"] == pytest.approx(300)
    assert figures["tpot"]["mean_ms"] == pytest.approx((250 + 100 / 3) / 2)
    assert output_tokens_per_s(records, 2.0) == pytest.approx(3.5)


def phase(rate_tokens: int, ttft_s: float, wall_s: float = 1.0) -> dict:
    """One phase of one arm: ``rate_tokens`` tokens in one request, first token after ``ttft_s``."""
    content = [ttft_s + 0.01 * i for i in range(rate_tokens)]
    return {"records": [record(0.0, content)], "wall_s": wall_s}


def rows_of(arms: dict[tuple[str, str, int], list[dict]]) -> dict[str, dict]:
    slo = SLO(ttft_ms=1000, tpot_ms=100)
    return {arm_name(*key): {"path": key[0], "batching": key[1], "concurrency": key[2], **summarize_arm(r, slo)}
            for key, r in arms.items()}


def test_goals_are_per_phase_ratios_of_the_worst_served_path():
    rows = rows_of({
        ("in-process", "continuous", 1): [phase(10, 0.100), phase(20, 0.200)],
        ("grpc", "continuous", 1): [phase(9, 0.102), phase(20, 0.203)],
        ("http", "continuous", 1): [phase(7, 0.104), phase(18, 0.205)],
        ("grpc", "continuous", 8): [phase(40, 0.5), phase(40, 0.5)],
        ("http", "continuous", 8): [phase(30, 0.5), phase(36, 0.5)],
        ("transformers", "none", 8): [phase(10, 0.9), phase(20, 0.9)],
    })
    result = goals(rows, "continuous", [])
    assert list(result) == [g.key for g in GOALS]
    first = result["served_vs_in_process_c1"]
    assert first["by_path"]["grpc"]["value"] == pytest.approx((0.9 + 1.0) / 2)
    assert first["by_path"]["http"]["value"] == pytest.approx((0.7 + 0.9) / 2)
    assert first["value"] == pytest.approx(0.8) and first["met"] is True  # the worse path, at the target
    second = result["served_vs_transformers_c8"]
    assert second["by_path"]["http"] == {"value": 2.4, "ratio": 2.4, "low": 1.8, "high": 3.0}
    assert second["value"] == pytest.approx(2.4) and second["met"] is True
    router = result["router_ttft_p50_over_in_process_ms"]
    assert router["value"] is None and router["met"] is None and router["note"] == NO_TTFT_PAIRS


def test_the_router_goal_is_the_median_of_its_interleaved_ttft_differences():
    # 20 rounds per path, the router 1..20 ms over in-process whatever the prompt's own TTFT (0.1 s or 1 s);
    # Triton's HTTP path 2 ms over in-process in every round
    base = [100.0 + 900 * (i % 2) for i in range(20)]
    interleaved = {"http": {"ttft_ms": [b + 2 for b in base], "reference_ms": base},
                   "router": {"ttft_ms": [b + (i + 1) for i, b in enumerate(base)], "reference_ms": base}}
    differences = ttft_differences(interleaved)
    assert [(d["path"], d["vs"]) for d in differences] == [("http", "in-process"), ("router", "in-process")]
    http, router = differences
    assert http["median_ms"] == pytest.approx(2.0) and http["pairs"] == 20
    assert router["median_ms"] == pytest.approx(10.5)
    assert (router["low"], router["high"]) == (pytest.approx(6.0), pytest.approx(15.0))  # order statistics 6 and 15
    goal = goals({}, "continuous", differences)["router_ttft_p50_over_in_process_ms"]
    assert goal["by_path"]["router"] == {"value": pytest.approx(10.5), "low": pytest.approx(6.0),
                                         "high": pytest.approx(15.0), "requests": 20}
    assert goal["value"] == pytest.approx(10.5) and goal["met"] is False and goal["note"] is None
    fast = ttft_differences({"router": {"ttft_ms": [b + 3 for b in base], "reference_ms": base}})
    assert goals({}, "continuous", fast)["router_ttft_p50_over_in_process_ms"]["met"] is True
    without = ttft_differences({"http": interleaved["http"]})  # no router path: no goal
    assert goals({}, "continuous", without)["router_ttft_p50_over_in_process_ms"]["note"] == NO_TTFT_PAIRS
    two = ttft_differences({"router": {"ttft_ms": [5.0, 8.0], "reference_ms": [1.0, 2.0]}})[0]
    assert two["median_ms"] == pytest.approx(5.0) and (two["low"], two["high"]) == (None, None)  # too few pairs


def test_the_router_is_a_served_path_in_the_tokens_per_s_goals():
    rows = rows_of({("in-process", "continuous", 1): [phase(5, 0.100), phase(5, 0.110)],
                    ("router", "continuous", 1): [phase(5, 0.104), phase(5, 0.118)]})
    served = goals(rows, "continuous", [])["served_vs_in_process_c1"]
    assert set(served["by_path"]) == {"router"} and served["value"] == pytest.approx(1.0) and served["met"] is True
    missing = goals(rows_of({("in-process", "continuous", 1): [phase(5, 0.1)]}), "continuous", [])
    assert missing["served_vs_in_process_c1"]["value"] is None
    assert "router / continuous / 1" in missing["served_vs_in_process_c1"]["note"]


def test_interleaved_rounds_alternate_the_reference_with_each_path_on_one_prompt():
    order, closed = [], []

    class Path:
        def __init__(self, name):
            self.name = name

        def __call__(self, prompt):
            order.append((self.name, prompt["k"]))
            ttft = {"ref": 0.010, "a": 0.012, "b": 0.015}[self.name] + prompt["k"] / 1000
            return record(0.0, [ttft])

        def close(self):
            closed.append(self.name)

    prompts = [{"k": k} for k in range(3)]
    pairs = interleaved_ttft(lambda: Path("ref"), {n: (lambda n=n: Path(n)) for n in "ab"}, prompts, 2)
    # reference, path, reference, path: every request follows one on the other server; a new prompt each round
    assert order == [("ref", 0), ("a", 0), ("ref", 1), ("b", 1), ("ref", 2), ("a", 2), ("ref", 0), ("b", 0)]
    assert pairs == {"a": {"ttft_ms": [12.0, 14.0], "reference_ms": [10.0, 12.0]},
                     "b": {"ttft_ms": [16.0, 15.0], "reference_ms": [11.0, 10.0]}}
    assert sorted(closed) == ["a", "b", "ref"]

    def silent():
        return lambda prompt: StreamRecord(0.0, (), 0.1, 0)

    with pytest.raises(RuntimeError, match="b streamed no token for prompt 1"):
        interleaved_ttft(lambda: Path("ref"), {"a": lambda: Path("a"), "b": silent}, prompts, 2)


def test_rows_carry_counts_goodput_and_the_batching_gain():
    rows = rows_of({("grpc", "continuous", 2): [phase(6, 0.2), phase(6, 2.0)],
                    ("grpc", "none", 2): [phase(3, 0.2), phase(4, 0.2)]})
    row = rows["grpc / continuous / 2"]
    assert row["tokens"] == 12 and row["requests"] == 2 and row["tokens_per_request"] == [6, 6]
    assert row["good_requests"] == 1 and row["goodput_per_s"] == pytest.approx(0.5)  # phase 2 misses the TTFT SLO
    assert row["ttft_p50_ms_by_phase"] == pytest.approx([200, 2000])
    assert batching_gain(rows) == [{"path": "grpc", "concurrency": 2, "ratio": 1.75, "low": 1.5, "high": 2.0}]
