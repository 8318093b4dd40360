"""Many generation streams over one ``Generator``: iteration-level batching, or a thread per stream.

A caller (the Triton model, a benchmark, a test) submits a prompt's token ids, its ``SamplingParams`` and
a ``Sink``; the scheduler hands the sink each token as it is chosen (``emit``), asks it before each
token whether its consumer went away (``cancelled``: the stream then stops, ``end_cancelled``), and
tells it when generation failed (``fail``).

- ``ContinuousScheduler`` (batching ``continuous``): one thread runs an ``export.generate.Batch``: between
  two decode steps it admits the requests that arrived (one prefill call for all of them, their cache
  merged into the batch's) and drops the finished and cancelled ones, so every step is one ONNX call
  for all active sequences, at most ``max_sequences`` of them (the others wait in arrival order).
- ``ThreadedScheduler`` (batching ``none``): each request decodes alone in a pool thread
  (``Generator.stream``), up to ``max_sequences`` at once; the ONNX calls of different streams overlap
  on the cores instead of sharing one call.

Either way a sequence gets the tokens it gets alone (greedy, fp32: left padding and the merged cache
are masked out). ``on_step(n)`` is called after each step that chose ``n`` tokens (the served model's
token and step counters).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from export.contract import DECODE_BATCHING
from export.decoding import SamplingParams
from export.generate import Batch, Generator, Token

log = logging.getLogger(__name__)



class Sink:
    """Where one stream's tokens go; subclasses override what they need."""

    def emit(self, token: Token, count: int) -> None:
        """One chosen token; ``count`` tokens so far, the last one carries a ``finish_reason``."""

    def cancelled(self) -> bool:
        """Whether the consumer went away (asked before each token)."""
        return False

    def end_cancelled(self, count: int) -> None:
        """The stream stopped after ``count`` tokens because ``cancelled()`` said so."""

    def fail(self, error: BaseException) -> None:
        """Generation failed (the model, not the request); no more calls follow."""


class Job:
    """One submitted stream (compared by identity: it keys its row in the batch)."""

    __slots__ = ("prompt", "params", "sink", "count")

    def __init__(self, prompt: Sequence[int], params: SamplingParams, sink: Sink):
        self.prompt, self.params, self.sink, self.count = list(prompt), params, sink, 0


class Scheduler:
    """The interface both schedulers share."""

    def __init__(self, generator: Generator, max_sequences: int = 8, on_step: Callable[[int], None] | None = None):
        if max_sequences < 1:
            raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
        self.generator, self.max_sequences = generator, max_sequences
        self.on_step = on_step or (lambda n: None)

    def submit(self, prompt: Sequence[int], params: SamplingParams, sink: Sink) -> None:
        """Queue one stream; ``Generator.check`` it first (the caller answers its GenerationError)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop; streams still running or queued get ``fail``."""
        raise NotImplementedError


class ContinuousScheduler(Scheduler):
    """Iteration-level batching in one thread (see the module docstring)."""

    def __init__(self, generator: Generator, max_sequences: int = 8, on_step: Callable[[int], None] | None = None):
        super().__init__(generator, max_sequences, on_step)
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="continuous-batching", daemon=True)
        self.thread.start()

    def submit(self, prompt: Sequence[int], params: SamplingParams, sink: Sink) -> None:
        self.queue.put(Job(prompt, params, sink))

    def close(self) -> None:
        self.closing.set()
        self.queue.put(None)  # wakes the loop if it waits for work
        self.thread.join()

    def _admit(self, block: bool, room: int) -> list[Job]:
        """Jobs that arrived (waiting for one when ``block``), at most ``room``; those cancelled meanwhile end here."""
        jobs: list[Job] = []
        while len(jobs) < room and not self.closing.is_set():
            try:
                job = self.queue.get(block=block and not jobs)
            except queue.Empty:
                break
            if job is None:
                continue
            if job.sink.cancelled():
                job.sink.end_cancelled(0)
            else:
                jobs.append(job)
        return jobs

    def _loop(self) -> None:
        batch = Batch(self.generator)
        jobs: list[Job] = []
        while not self.closing.is_set():
            jobs = self._admit(block=not batch, room=self.max_sequences - len(batch))
            try:
                if jobs:
                    batch.join(jobs, [j.prompt for j in jobs], [j.params for j in jobs])
                    jobs = []
                if batch:
                    self._step(batch)
            except Exception as e:  # noqa: BLE001 - a failed ONNX call fails the streams in it, not the model
                log.exception("decode step failed for %d streams", len(batch.keys) + len(jobs))
                for job in [*batch.keys, *jobs]:
                    job.sink.fail(e)
                batch, jobs = Batch(self.generator), []
        for job in [*batch.keys, *jobs, *self._drain()]:
            job.sink.fail(RuntimeError("the model is shutting down"))

    def _step(self, batch: Batch) -> None:
        """One token for every row (a cancelled stream leaves instead), then one decode call for those left."""
        gone, emitted = [], 0
        for job, token in batch.choose():
            if job.sink.cancelled():
                gone.append(job)
                job.sink.end_cancelled(job.count)
                continue
            job.count += 1
            try:
                job.sink.emit(token, job.count)
                emitted += 1
            except Exception:  # noqa: BLE001 - a sink that cannot deliver ends its own stream only
                log.exception("a stream's sink failed after %d tokens; dropping that stream", job.count)
                gone.append(job)
        batch.drop(gone)
        self.on_step(emitted)
        batch.advance()

    def _drain(self) -> list[Job]:
        """The jobs still queued."""
        jobs = []
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

class ThreadedScheduler(Scheduler):
    """A thread per stream, ``max_sequences`` at once (see the module docstring)."""

    def __init__(self, generator: Generator, max_sequences: int = 8, on_step: Callable[[int], None] | None = None):
        super().__init__(generator, max_sequences, on_step)
        self.pool = ThreadPoolExecutor(max_workers=max_sequences, thread_name_prefix="stream")
        self.lock = threading.Lock()
        self.closing = threading.Event()

    def submit(self, prompt: Sequence[int], params: SamplingParams, sink: Sink) -> None:
        self.pool.submit(self._run, Job(prompt, params, sink))

    def close(self) -> None:
        self.closing.set()
        self.pool.shutdown(wait=True)

    def _run(self, job: Job) -> None:
        try:
            if self.closing.is_set():
                raise RuntimeError("the model is shutting down")
            for token in self.generator.stream(job.prompt, job.params):
                if self.closing.is_set():
                    raise RuntimeError("the model is shutting down")
                if job.sink.cancelled():
                    job.sink.end_cancelled(job.count)
                    return
                job.count += 1
                job.sink.emit(token, job.count)
                with self.lock:
                    self.on_step(1)
        except Exception as e:  # noqa: BLE001 - this stream fails, the others go on
            if not self.closing.is_set():
                log.exception("stream failed after %d tokens", job.count)
            job.sink.fail(e)


def make_scheduler(batching: str, generator: Generator, max_sequences: int = 8,
                   on_step: Callable[[int], None] | None = None) -> Scheduler:
    """The scheduler of a ``DECODE_BATCHING`` name."""
    if batching not in DECODE_BATCHING:
        raise ValueError(f"unknown batching {batching!r}; expected one of: {', '.join(DECODE_BATCHING)}")
    kind = ContinuousScheduler if batching == "continuous" else ThreadedScheduler
    return kind(generator, max_sequences, on_step)


class QueueSink(Sink):
    """A sink read as an iterator of tokens (in-process callers: tests, the benchmark's baseline).

    ``cancel()`` makes ``cancelled()`` true, as a client that goes away does; the iterator then ends.
    """

    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = threading.Event()
        self.cancelled_after: int | None = None
        """Tokens the stream had when the scheduler stopped it for the cancellation (None: not stopped)."""

    def emit(self, token: Token, count: int) -> None:
        self.items.put(token)

    def cancelled(self) -> bool:
        return self.stop.is_set()

    def cancel(self) -> None:
        self.stop.set()

    def end_cancelled(self, count: int) -> None:
        self.cancelled_after = count
        self.items.put(None)

    def fail(self, error: BaseException) -> None:
        self.items.put(error)

    def __iter__(self) -> Iterator[Token]:
        while True:
            item = self.items.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return
