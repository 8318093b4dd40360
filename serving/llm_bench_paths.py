"""How the generation bench streams one prompt over each path, and how an arm runs its concurrent streams.

A path is a factory of ``Streamer``s (one per client thread: a client holds one connection or stream); a
streamer streams one prompt (``{"text", "messages", "ids"}``: the rendered prompt, the chat messages it was
rendered from, its token ids) and returns the request's ``tunestack.bench.streams.StreamRecord``:

- ``in_process_streamer``: the scheduler of ``export.scheduler`` called directly (the limit): every token is a
  chunk with content;
- ``triton_streamer``: Triton's HTTP ``generate_stream`` or gRPC stream (``serving.llm_client.TritonLLM``):
  a response per token, the token count the model's ``completion_tokens``;
- ``openai_streamer``: any OpenAI-compatible server (``serving.openai_stream``): the peers, and a router arm
  the same way (``openai_streamer(router_url, model, new_tokens)``); the count is the server's
  ``usage.completion_tokens``, and a server that tokenized the prompt into other ids than the decode loop's
  fails the run (it would not be the same prompt).

Every completion is exactly ``new_tokens`` long: generated past the EOS token (``ignore_eos``), greedy.

``run_streams`` runs an arm (its concurrent streams, one path); ``interleaved_ttft`` streams one request at a
time, a path and the reference (in-process) in turn on one prompt, for TTFT differences that share their prompt
and their second of the machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from export.decoding import SamplingParams
from export.scheduler import QueueSink, Scheduler
from serving.llm_client import TritonLLM
from serving.openai_stream import chat_request, timed_chat
from tunestack.bench.streams import StreamRecord, StreamTimer

Streamer = Callable[[dict], StreamRecord]
"""Streams one prompt to the end; its record."""
StreamerFactory = Callable[[], Streamer]
"""Makes one client thread's streamer (closed with its ``close()``, when it has one, after the arm)."""


def in_process_streamer(scheduler: Scheduler, new_tokens: int) -> StreamerFactory:
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)

    def stream(prompt: dict) -> StreamRecord:
        timer, sink = StreamTimer(), QueueSink()
        scheduler.submit(prompt["ids"], params, sink)
        for _ in sink:
            timer.chunk(True)
        return timer.finish()

    return lambda: stream


class TritonStreamer:
    """One client thread's ``TritonLLM`` (HTTP or gRPC)."""

    def __init__(self, url: str, protocol: str, model: str, new_tokens: int):
        self.llm, self.new_tokens = TritonLLM(url, protocol, model, timeout=300), new_tokens

    def __call__(self, prompt: dict) -> StreamRecord:
        timer, tokens = StreamTimer(), 0
        for chunk in self.llm.stream(prompt["text"], max_tokens=self.new_tokens, ignore_eos=True):
            timer.chunk(chunk.completion_tokens > tokens, chunk.received_s)
            tokens = chunk.completion_tokens
        return timer.finish(tokens)

    def close(self) -> None:
        self.llm.close()


def triton_streamer(url: str, protocol: str, model: str, new_tokens: int) -> StreamerFactory:
    return lambda: TritonStreamer(url, protocol, model, new_tokens)


class OpenAIStreamer:
    """One client thread's connection to an OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str, new_tokens: int):
        self.client = httpx.Client(base_url=base_url, timeout=300, trust_env=False)
        self.model, self.new_tokens = model, new_tokens

    def __call__(self, prompt: dict) -> StreamRecord:
        body = chat_request(self.model, prompt["messages"], max_tokens=self.new_tokens, ignore_eos=True)
        record, result = timed_chat(self.client, body)
        if result.prompt_tokens != len(prompt["ids"]):
            raise RuntimeError(f"{self.client.base_url} counted {result.prompt_tokens} prompt tokens where the decode "
                               f"loop has {len(prompt['ids'])}: not the same prompt")
        return record

    def close(self) -> None:
        self.client.close()


def openai_streamer(base_url: str, model: str, new_tokens: int) -> StreamerFactory:
    return lambda: OpenAIStreamer(base_url, model, new_tokens)


def run_streams(make: StreamerFactory, prompts: list[dict], concurrency: int, requests: int) -> dict:
    """``concurrency`` threads start together, each streaming ``requests`` completions one after another:
    ``{"records": [StreamRecord, ...], "wall_s": the arm's wall time}``."""
    records: list[list[StreamRecord]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        stream = None
        try:
            stream = make()
            barrier.wait()
            for r in range(requests):
                records[k].append(stream(prompts[(k * requests + r) % len(prompts)]))
        except threading.BrokenBarrierError:
            pass  # another thread failed before the start
        except BaseException as e:  # noqa: BLE001 - reported by the caller, after every thread ended
            errors.append(e)
            barrier.abort()
        finally:
            getattr(stream, "close", lambda: None)()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # a thread failed: joined and raised below
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"records": [r for rs in records for r in rs], "wall_s": wall}


def interleaved_ttft(reference: StreamerFactory, paths: dict[str, StreamerFactory], prompts: list[dict],
                     rounds: int) -> dict[str, dict[str, list[float]]]:
    """One stream at a time, ``rounds`` rounds per path: round ``i`` streams one prompt (``prompts[i % n]``)
    through ``reference`` and then through one path (``paths`` in turn). Each path's TTFTs (ms) and the
    reference's in the same rounds: a pair shares its prompt and its second of the machine.

    The sequence strictly alternates, reference, path, reference, path, so every request of every path follows
    the same: one request on the other server. What came just before moves TTFT by tens of milliseconds on a
    small machine (measured here: Triton's HTTP path read 28 ms quicker right after another Triton request,
    and 40 ms slower after two in-process ones, where the same path in a steady alternation showed no effect of
    which of the pair went first); a round of several Triton paths, or an order that alternates, would hand
    that to some paths and not to others."""
    streams = {name: make() for name, make in {"": reference, **paths}.items()}
    names = list(paths)
    pairs: dict[str, dict[str, list[float]]] = {name: {"ttft_ms": [], "reference_ms": []} for name in names}
    try:
        for i in range(rounds * len(names)):
            name, prompt = names[i % len(names)], prompts[i % len(prompts)]
            ttft = {who: streams[who](prompt).ttft_s for who in ("", name)}
            if None in ttft.values():
                raise RuntimeError(f"{'the reference' if ttft[''] is None else name} streamed no token for prompt "
                                   f"{i % len(prompts)}")
            pairs[name]["ttft_ms"].append(round(ttft[name] * 1000, 3))
            pairs[name]["reference_ms"].append(round(ttft[""] * 1000, 3))
    finally:
        for stream in streams.values():
            getattr(stream, "close", lambda: None)()
    return pairs
