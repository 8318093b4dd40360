"""Units of the router's generative path: OpenAI's chunk encoder, request checks and error mapping, a stream's
figures, their accumulation (recorder, in-memory judge, the store on SQLite and PostgreSQL), and the judge's
generative metrics (which metrics, alpha's split, a slower arm found worse)."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from experiments.generation import GENERATION_FIELDS, GenerationSample, sample_sums
from experiments.judge import GENERATIVE_METRICS, METRICS, Judge, JudgeConfig
from experiments.spec import experiment_from_dict
from experiments.store import AnswerRow, open_store
from experiments.store.sync import spec_of
from serving.openai_wire import Answer, RequestError, usage
from serving.router.answer_texts import AnswerTexts
from serving.router.errors import FieldError, NotFound, UpstreamError, UpstreamTimeout
from serving.router.metrics import Recorder
from serving.router.openai_door import openai_error
from serving.router.openai_request import parse_ask
from tunestack.bench.streams import StreamRecord

ARMS = ("control", "treatment")


def sample(ttft_ms: float, gaps_ms: tuple[float, ...]) -> GenerationSample:
    return GenerationSample(ttft_ms, gaps_ms, len(gaps_ms) + 1, (ttft_ms + sum(gaps_ms)) / 1000)


# -- the wire ---------------------------------------------------------------------------------------------

def test_chat_chunks_carry_the_arm_and_usage_comes_last():
    answer = Answer("exp", chat=True, extra={"tunestack": {"arm": "b", "version": "2"}})
    first = answer.chunk({"role": "assistant", "content": ""}, with_usage=True)
    piece = answer.chunk({"content": "Fre"}, with_usage=True)
    last = answer.usage_chunk(usage(45, 3))
    assert first["object"] == piece["object"] == "chat.completion.chunk" and first["id"] == last["id"]
    assert piece["choices"] == [{"index": 0, "delta": {"content": "Fre"}, "logprobs": None, "finish_reason": None}]
    assert piece["usage"] is None and piece["tunestack"] == {"arm": "b", "version": "2"}
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 45, "completion_tokens": 3, "total_tokens": 48}
    whole = answer.completion("Fresh.", "stop", usage(45, 3))
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"] == {"role": "assistant",
                                                                                       "content": "Fresh."}


def test_text_completion_chunks_carry_text():
    answer = Answer("exp", chat=False)
    assert answer.id.startswith("cmpl-")
    chunk = answer.chunk({"content": "abc"}, "length")
    assert chunk["object"] == "text_completion" and "usage" not in chunk
    assert chunk["choices"] == [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "length"}]
    assert answer.completion("abc", "length", usage(1, 2))["choices"][0]["text"] == "abc"


def test_a_request_maps_onto_the_models_generate_body():
    ask = parse_ask({"model": "e", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9,
                     "max_tokens": 3, "stop": ".", "seed": 4, "temperature": 0.5, "user": "u-1", "top_p": None,
                     "stream": True, "stream_options": {"include_usage": True}}, chat=True)
    assert (ask.max_tokens, ask.stop, ask.user, ask.include_usage, ask.top_p) == (9, (".",), "u-1", True, 1.0)
    body = ask.upstream_body()
    assert body == {"max_tokens": 9, "temperature": 0.5, "top_p": 1.0, "ignore_eos": False, "seed": 4,
                    "messages": '[{"role": "user", "content": "hi"}]', "stop": ["."]}
    assert parse_ask({"model": "e", "prompt": "x"}, chat=False).upstream_body()["text_input"] == "x"


@pytest.mark.parametrize(("body", "chat", "param", "named"), [
    ({"n": 2}, True, "n", "n must be 1 (one choice per request), got 2"),
    ({"max_completion_tokens": 0}, True, "max_completion_tokens", "max_completion_tokens must be an integer >= 1"),
    ({"prompt": ["a", "b"]}, False, "prompt", "prompt must be a non-empty string"),
    ({"messages": "hi"}, True, "messages", "messages must be a non-empty JSON list"),
    ({"stream_options": {"x": 1}}, True, "stream_options", "stream_options must be an object with only include_usage"),
    ({"user": 7}, True, "user", "user must be printable text"),
    ({"tools": []}, True, "tools", "unsupported field(s) 'tools'"),
])
def test_every_bad_field_is_named(body, chat, param, named):
    base = {"model": "e", "messages": [{"role": "user", "content": "hi"}]} if chat else {"model": "e", "prompt": "p"}
    with pytest.raises(RequestError) as caught:
        parse_ask(base | body, chat)
    assert caught.value.param == param and named in str(caught.value) and caught.value.status == 400


def test_router_errors_become_openai_errors():
    assert openai_error(NotFound("unknown experiment 'x'")).body()["error"] == {
        "message": "unknown experiment 'x'", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}
    assert openai_error(FieldError("top_p must ...", "top_p")).body()["error"]["param"] == "top_p"
    down = openai_error(UpstreamError("arm down"))
    assert (down.status, down.body()["error"]["type"]) == (503, "server_error")
    assert openai_error(UpstreamTimeout("slow")).status == 504


# -- a stream's figures and their accumulation --------------------------------------------------------------

def test_a_stream_record_becomes_its_figures():
    record = StreamRecord(sent_s=10.0, content_s=(10.1, 10.13, 10.17), last_s=10.17, output_tokens=3)
    s = GenerationSample.of(record)
    assert s.ttft_ms == pytest.approx(100) and s.itl_ms == pytest.approx((30, 40))
    assert s.seconds == pytest.approx(0.17) and s.tokens_per_s == pytest.approx(3 / 0.17)
    sums = dict(zip(GENERATION_FIELDS, sample_sums(s), strict=True))
    assert sums["gaps"] == 2 and sums["itl_sum"] == pytest.approx(70) and sums["itl_sq"] == pytest.approx(2500)
    assert sums["rate_sq"] == pytest.approx(9 / 0.17) and sums["quality_n"] == 0


def test_recorder_metrics_and_the_in_memory_judge_accumulate_per_arm():
    rec = Recorder("exp")
    rec.start_judge(ARMS, {"control": 1, "treatment": 1}, 1)
    rec.served("r1", "control", 0.2, (), key="u1", assigned="control", period=1,
               generation=(sample(50, (10, 20)), "Fresh."))
    rec.served("r2", "control", 0.1, (), key="u2", assigned="control", period=1, generation=(sample(30, ()), "x"))
    assert rec.quality("r1", 0.5) == "control"
    with pytest.raises(KeyError):
        rec.quality("r1", 0.7)
    from prometheus_client import generate_latest
    text = generate_latest(rec.registry).decode()
    assert 'router_output_tokens_total{arm="control",experiment="exp"} 4.0' in text
    assert 'router_inter_token_latency_seconds_count{arm="control",experiment="exp"} 2.0' in text
    assert 'router_time_to_first_token_seconds_sum{arm="control",experiment="exp"} 0.08' in text
    totals = rec.snapshot()["arms"]["control"].generation.to_dict()
    assert totals == {"streams": 2, "ttft_mean_ms": 40.0, "itl_mean_ms": 15.0, "output_tokens": 4,
                      "output_tokens_mean": 2.0, "tokens_per_s": pytest.approx(4 / 0.11), "quality_n": 1,
                      "quality_mean": 0.5}
    table = rec.unit_table()
    assert table.generative and float(table.generation["ttft_sum"].sum()) == 80.0
    assert float(table.generation["quality_sum"].sum()) == 0.5


def test_answer_texts_are_dropped_when_too_old_or_too_many():
    texts = AnswerTexts(keep_s=10, max_size=2)
    texts.keep("a", "A", now=0)
    texts.keep("b", "B", now=5)
    assert texts.get("a", now=9) == "A" and texts.get("a", now=11) is None
    texts.keep("c", "C", now=12)  # a is older than 10 s: dropped
    assert len(texts) == 2 and texts.get("b", now=12) == "B"
    texts.keep("d", "D", now=13)  # over max_size: the oldest (b) goes
    assert texts.get("b", now=13) is None and texts.get("d", now=13) == "D"


# -- the judge -----------------------------------------------------------------------------------------------

def generative_judge(slowdown: float, users: int = 400, seed: int = 0) -> Judge:
    """Sticky users whose prompts differ in length (their TTFT factor), the treatment's TTFT x ``slowdown``."""
    rng = random.Random(seed)
    judge = Judge(JudgeConfig(), ARMS, {"control": 1, "treatment": 1}, period=1)
    factor = {u: rng.lognormvariate(0, 0.6) for u in range(users)}
    for i in range(6000):
        u = rng.randrange(users)
        arm = ARMS[u % 2]
        ttft = 100 * factor[u] * rng.lognormvariate(0, 0.2) * (slowdown if arm == "treatment" else 1.0)
        gaps = tuple(30 * rng.lognormvariate(0, 0.2) for _ in range(rng.randint(5, 25)))
        s = sample(ttft, gaps)
        judge.answered(arm, s.seconds * 1000, generation=s, unit=f"user-{u}")
        if i % 3 == 0:
            judge.quality(arm, rng.random(), unit=f"user-{u}")
    return judge


def test_the_judge_reads_a_generative_experiments_metrics_and_splits_alpha_over_them():
    verdicts = generative_judge(1.0).report()
    judged = verdicts.treatments["treatment"]
    assert tuple(judged.metrics) == GENERATIVE_METRICS
    assert judged.alpha_per_metric == pytest.approx(0.05 / (len(GENERATIVE_METRICS) + 1))
    assert judged.metrics["ttft_mean"].verdict not in ("better", "worse")
    assert judged.metrics["ttft_mean"].units_control > 100 and judged.metrics["ttft_mean"].design_effect > 1
    assert judged.metrics["tokens_per_s"].n_control == judged.metrics["ttft_mean"].n_control  # streams, not seconds
    classifier = Judge(JudgeConfig(), ARMS, period=1)
    classifier.answered("control", 10.0, label="POSITIVE", unit="u")
    judged = classifier.report().treatments["treatment"]
    assert tuple(judged.metrics) == METRICS and judged.alpha_per_metric == pytest.approx(0.05 / 7)


def test_a_slower_prefill_is_found_worse_on_ttft():
    judged = generative_judge(1.5).report().treatments["treatment"].metrics
    assert judged["ttft_mean"].verdict == "worse" and judged["ttft_mean"].estimate > 0
    assert judged["itl_mean"].verdict != "worse"


# -- the store ---------------------------------------------------------------------------------------------------

def test_the_store_keeps_generation_sums_texts_and_quality(store_url):
    spec = {"name": "gen", "sticky": {"header": "X-User-Id"},
            "arms": [{"name": a, "model": "m", "version": str(i + 1), "weight": 1} for i, a in enumerate(ARMS)]}
    rng = random.Random(1)
    memory = Judge(JudgeConfig(), ARMS, {"control": 1, "treatment": 1}, period=1)
    rows = []
    for i in range(200):
        key = f"user-{rng.randrange(30)}"
        arm = ARMS[int(key[5:]) % 2]
        s = sample(rng.uniform(20, 200), tuple(rng.uniform(5, 50) for _ in range(rng.randrange(0, 8))))
        rows.append(AnswerRow("gen", f"r{i}", arm, arm, "1", key, s.seconds, (), 0.0, (), 1, s, f"text {i}"))
        memory.answered(arm, s.seconds * 1000, generation=s, unit=rows[-1].unit)

    async def go():
        async with open_store(store_url) as store:
            await store.add_revision("gen", spec_of(experiment_from_dict(spec)), "admin", "test", "start")
            await store.write_batch(rows)
            assert await store.answer_text("gen", "r7") == "text 7"
            found = await store.add_quality("gen", "r7", 0.25)
            assert found == (rows[7].arm, 0.25) and await store.add_quality("gen", "missing", 0.5) is None
            from experiments.store.base import DuplicateFeedback
            with pytest.raises(DuplicateFeedback):
                await store.add_quality("gen", "r7", 0.9)
            await store.expire_feedback("gen", older_than=1.0)  # the texts kept at time 0 are dropped
            assert await store.answer_text("gen", "r7") is None
            return await store.unit_table("gen", ARMS, 0.99, 500), await store.snapshot("gen", 100)

    table, snapshot = asyncio.run(go())
    memory.quality(rows[7].arm, 0.25, unit=rows[7].unit)
    mem = memory.table()
    assert table.generative
    for name in GENERATION_FIELDS:
        assert float(np.sum(table.generation[name])) == pytest.approx(float(np.sum(mem.generation[name])))
    for arm in ARMS:
        streams = sum(1 for r in rows if r.arm == arm)
        assert snapshot["arms"][arm].generation.streams == streams
