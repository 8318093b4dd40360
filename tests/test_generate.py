"""The decode loop (export.generate, export.decoding) on the tiny random Llama exported with its KV cache."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from export.decoding import FINISH_LENGTH, FINISH_STOP, SamplingParams, TextRelease, choose
from export.errors import GenerationError
from export.generate import Generator


@pytest.fixture(scope="module")
def generator(tiny_causal_onnx_dir) -> Generator:
    return Generator.from_folder(tiny_causal_onnx_dir)


@pytest.fixture(scope="module")
def prompts(tiny_causal_onnx_dir, generator) -> list[list[int]]:
    rows = [json.loads(line) for line in (tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()]
    return [generator.encode(r["prompt"]) for r in rows[:4]]


def test_batch_gives_each_sequence_its_tokens_alone(generator, prompts):
    assert len({len(p) for p in prompts}) > 1, "the prompts must differ in length to test the left padding"
    params = SamplingParams(max_tokens=10)
    alone = [list(generator.stream(p, params)) for p in prompts]
    together: list[list] = [[] for _ in prompts]
    for index, token in generator.stream_batch(prompts, [params] * len(prompts)):
        together[index].append(token)
    for a, b in zip(alone, together, strict=True):
        assert [t.id for t in a] == [t.id for t in b]
        assert max(float(np.abs(x.logits - y.logits).max()) for x, y in zip(a, b, strict=True)) < 1e-4
        assert [t.finish_reason for t in b][-1] in (FINISH_STOP, FINISH_LENGTH)


def test_streamed_text_is_the_decoded_tokens(generator, prompts):
    tokens = list(generator.stream(prompts[0], SamplingParams(max_tokens=16)))
    ids = [t.id for t in tokens if t.id not in generator.eos]
    assert "".join(t.text for t in tokens) == generator.tokenizer.decode(ids, skip_special_tokens=True)
    assert all(t.finish_reason is None for t in tokens[:-1]) and tokens[-1].finish_reason is not None
    assert len(tokens) <= 16 and (tokens[-1].finish_reason == FINISH_LENGTH) == (tokens[-1].id not in generator.eos)


def test_stop_string_ends_the_text_before_it(generator, prompts):
    full = generator.generate(prompts[1], SamplingParams(max_tokens=24, temperature=1.0, seed=3))
    assert len(full.text) > 8, full
    stop = full.text[5:8]
    stopped = generator.generate(prompts[1], SamplingParams(max_tokens=24, temperature=1.0, seed=3, stop=(stop, "@@@")))
    assert stopped.text == full.text[: full.text.find(stop)]
    assert stopped.finish_reason == FINISH_STOP and stop not in stopped.text


def test_sampling_follows_the_seed_and_top_p(generator, prompts):
    sampled = [generator.generate(prompts[2], SamplingParams(max_tokens=12, temperature=1.0, seed=s)).token_ids
               for s in (7, 7, 8)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    greedy = generator.generate(prompts[2], SamplingParams(max_tokens=12)).token_ids
    nucleus = generator.generate(prompts[2], SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=1))
    assert nucleus.token_ids == greedy  # a nucleus of one token is the argmax


def test_choose_draws_only_from_the_nucleus():
    logits = np.array([5.0, 4.0, -10.0, -10.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert {choose(logits, SamplingParams(temperature=1.0, top_p=0.5), rng) for _ in range(50)} == {0}
    assert {choose(logits, SamplingParams(temperature=1.0, top_p=0.9), rng) for _ in range(200)} == {0, 1}
    assert choose(logits, SamplingParams(), rng) == 0


def test_text_release_holds_back_stop_prefixes_and_partial_characters(tiny_causal_onnx_dir):
    tokenizer = Tokenizer.from_file(str(tiny_causal_onnx_dir / "tokenizer.json"))
    release = TextRelease(tokenizer, ("abc",))
    out = [release.push(tokenizer.token_to_id(c)) for c in "xab"]
    assert out == [("x", False), ("", False), ("", False)]  # "ab" may start "abc"
    assert release.push(tokenizer.token_to_id("d")) == ("abd", False)
    assert release.push(tokenizer.token_to_id("a")) == ("", False)
    assert release.flush() == "a" and release.text == "xabda"
    snowman = tokenizer.encode("☃", add_special_tokens=False).ids
    assert len(snowman) == 3  # three byte tokens: the first two are half a character
    plain = TextRelease(tokenizer, ())
    assert [plain.push(i)[0] for i in snowman] == ["", "", "☃"]
    stopping = TextRelease(tokenizer, ("b",))
    assert [stopping.push(tokenizer.token_to_id(c)) for c in "ab"] == [("a", False), ("", True)]


@pytest.mark.parametrize(("params", "message"), [
    ({"temperature": -1}, "temperature must be a number in [0, 2] (0: greedy), got -1"),
    ({"top_p": 0}, "top_p must be a number in (0, 1], got 0"),
    ({"max_tokens": 0}, "max_tokens must be an integer >= 1, got 0"),
    ({"seed": -2}, "seed must be an integer >= 0 or null, got -2"),
    ({"stop": ["", "x"]}, "stop must be a string or a list of non-empty strings, got ('', 'x')"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop holds 5 strings; at most 4 are allowed"),
    ({"temperature": "hot", "max_tokens": 2.5}, "max_tokens must be an integer >= 1, got 2.5\n  - temperature"),
])
def test_bad_sampling_parameters_are_named(params, message):
    with pytest.raises(GenerationError) as info:
        SamplingParams(**params)
    assert message in str(info.value)


def test_bad_prompts_are_refused_before_any_work(generator, prompts):
    with pytest.raises(GenerationError, match="prompt 1 is empty"):
        list(generator.stream_batch([prompts[0], []], [SamplingParams()] * 2))
    too_long = [5] * generator.settings.max_context
    with pytest.raises(GenerationError, match=f"prompt 0 has {len(too_long)} tokens; the model's context holds"):
        generator.generate(too_long)
    room = generator.settings.max_context - 3
    assert len(generator.generate([5] * room, SamplingParams(max_tokens=50)).token_ids) <= 3


def test_the_decode_loop_does_not_import_torch():
    code = "import sys, export.generate, export.decoding; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_decode_loop_bench_writes_its_figures_through_the_harness(tiny_causal_onnx_dir, tmp_path):
    from export.generate_bench import main

    out = tmp_path / "bench"
    assert main(["--onnx-dir", str(tiny_causal_onnx_dir), "--variants", "fp32", "--batch-sizes", "1,2",
                 "--new-tokens", "4", "--rounds", "1", "--threads", "1", "--out", str(out)]) == 0
    document = json.loads((out / "bench.json").read_text())
    assert document["bench"] == "generate" and "load_average_at_end" in document["machine"]
    rows = document["variants"]["fp32"]
    assert set(rows) == {"1", "2"}
    for batch, r in rows.items():
        assert r["prefill_ms"] > 0 and r["decode_ms_per_step"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_s_per_sequence"] * int(batch))
    assert "| fp32 | 2 |" in (out / "bench.md").read_text()
