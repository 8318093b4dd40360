"""Many streams over one Generator (export.scheduler, export.generate.Batch) on the tiny random Llama: sequences
that join a running batch, leave it, are cancelled or whose sink fails each get the tokens they get alone."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from export.decoding import SamplingParams
from export.generate import Batch, Generator
from export.scheduler import ContinuousScheduler, QueueSink, ThreadedScheduler, make_scheduler

MODES = ("continuous", "none")


@pytest.fixture(scope="module")
def generator(tiny_causal_onnx_dir) -> Generator:
    return Generator.from_folder(tiny_causal_onnx_dir)


@pytest.fixture(scope="module")
def prompts(tiny_causal_onnx_dir, generator) -> list[list[int]]:
    rows = [json.loads(line) for line in (tiny_causal_onnx_dir / "heldout.jsonl").read_text().splitlines()]
    return [generator.encode(r["prompt"]) for r in rows[:6]]


LENGTHS = [3, 11, 5, 14, 7, 9]
"""Tokens per stream (past the EOS): streams end at different steps, so later ones join a running batch."""


def params_of(length: int) -> SamplingParams:
    return SamplingParams(max_tokens=length, ignore_eos=True)


class GatedSink(QueueSink):
    """Holds the scheduler in its first ``emit`` until ``gate`` is set: every job is queued by then."""

    def __init__(self, gate: threading.Event):
        super().__init__()
        self.gate = gate

    def emit(self, token, count):
        self.gate.wait(timeout=60)
        super().emit(token, count)


class CancelAt(QueueSink):
    """Says it is cancelled once it has ``n`` tokens, as a client that goes away after reading ``n``."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def emit(self, token, count):
        super().emit(token, count)
        if count == self.n:
            self.cancel()


class Broken(QueueSink):
    def emit(self, token, count):
        raise ConnectionError("client gone")


def run(scheduler, prompts, sinks, gate=None):
    for prompt, length, sink in zip(prompts, LENGTHS, sinks, strict=True):
        scheduler.submit(prompt, params_of(length), sink)
    if gate is not None:
        gate.set()
    return [list(sink) if not isinstance(sink, Broken) else None for sink in sinks]


def test_joining_a_running_batch_gives_each_sequence_its_tokens_alone(generator, prompts):
    steps: list[int] = []
    scheduler = ContinuousScheduler(generator, max_sequences=3, on_step=steps.append)
    gate = threading.Event()
    try:
        streams = run(scheduler, prompts, [GatedSink(gate)] + [QueueSink() for _ in prompts[1:]], gate)
    finally:
        scheduler.close()
    for prompt, length, tokens in zip(prompts, LENGTHS, streams, strict=True):
        alone = list(generator.stream(prompt, params_of(length)))
        assert [t.id for t in tokens] == [t.id for t in alone]
        assert max(float(np.abs(a.logits - b.logits).max()) for a, b in zip(alone, tokens, strict=True)) < 1e-4
    assert sum(steps) == sum(LENGTHS) and max(steps) == 3  # never more than max_sequences in one step
    assert len(steps) < sum(LENGTHS) - 10  # many steps served several streams with one call


def test_batch_cuts_cache_columns_no_row_uses(generator, prompts):
    batch = Batch(generator)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    short = min(range(len(prompts)), key=lambda i: len(prompts[i]))
    batch.join(["long", "short"], [prompts[longest], prompts[short]], [params_of(1), params_of(4)])
    assert batch.mask.shape[1] == len(prompts[longest])
    batch.choose()
    batch.advance()  # the long prompt finished: the short one's left padding is cut
    assert batch.keys == ["short"] and batch.mask.shape[1] == len(prompts[short]) + 1 and batch.mask.all()
    assert all(p.shape[2] == batch.mask.shape[1] for p in batch.past)


@pytest.mark.parametrize("mode", MODES)
def test_a_cancelled_stream_stops_and_the_others_go_on(generator, prompts, mode):
    scheduler = make_scheduler(mode, generator, max_sequences=4)
    sinks = [QueueSink(), CancelAt(2), QueueSink(), CancelAt(1), QueueSink(), QueueSink()]
    try:
        streams = run(scheduler, prompts, sinks)
    finally:
        scheduler.close()
    assert [sinks[1].cancelled_after, sinks[3].cancelled_after] == [2, 1]
    assert [len(streams[1]), len(streams[3])] == [2, 1]
    for i in (0, 2, 4, 5):
        assert [t.id for t in streams[i]] == generator.generate(prompts[i], params_of(LENGTHS[i])).token_ids


@pytest.mark.parametrize("mode", MODES)
def test_a_sink_that_fails_ends_only_its_stream(generator, prompts, mode):
    scheduler = make_scheduler(mode, generator, max_sequences=6)
    sinks = [QueueSink(), Broken(), QueueSink(), QueueSink(), QueueSink(), QueueSink()]
    try:
        streams = run(scheduler, prompts, sinks)
    finally:
        scheduler.close()
    assert streams[1] is None
    assert [len(s) for i, s in enumerate(streams) if i != 1] == [n for i, n in enumerate(LENGTHS) if i != 1]


@pytest.mark.parametrize("kind", [ContinuousScheduler, ThreadedScheduler])
def test_closing_fails_the_streams_it_did_not_finish(generator, prompts, kind):
    scheduler = kind(generator, max_sequences=1)
    gate = threading.Event()
    first, waiting = GatedSink(gate), QueueSink()
    scheduler.submit(prompts[0], SamplingParams(max_tokens=400, ignore_eos=True), first)
    scheduler.submit(prompts[1], params_of(3), waiting)
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    gate.set()
    closer.join(timeout=60)
    assert not closer.is_alive()
    for sink in (first, waiting):
        with pytest.raises(RuntimeError, match="shutting down"):
            list(sink)
