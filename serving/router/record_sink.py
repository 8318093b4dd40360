"""What the ``Recorder`` hands to the store: rows built on the request path in O(1), written later in batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from experiments.generation import GenerationSample
from experiments.spec import Experiment
from experiments.store.records import AnswerRow, ErrorRow, ShadowRow
from experiments.store.writer import BatchWriter
from serving.router.metrics import RequestRef


class RecordSink:
    """Turns the recorder's events into store rows and queues them on ``writer`` (never blocks)."""

    def __init__(self, writer: BatchWriter, experiment: Callable[[], Experiment]):
        self.writer = writer
        self._experiment = experiment

    def served(self, request_id: str, arm: str, latency_s: float, labels: tuple[str, ...], key: str | None,
               assigned: str | None, confidences: Sequence[float] = (), period: int | None = None,
               generation: tuple[GenerationSample, str] | None = None) -> None:
        exp = self._experiment()
        try:
            version = exp.arm(arm).version
        except KeyError:  # the arms changed while the request was in flight
            version = ""
        sample, text = generation if generation is not None else (None, None)
        self.writer.put(AnswerRow(exp.name, request_id, arm, assigned or arm, version, key, latency_s, labels,
                                  time.time(), tuple(confidences), period, sample, text))

    def error(self, arm: str, code: int | str, request: RequestRef | None = None) -> None:
        name, at = self._experiment().name, time.time()
        if request is None:
            self.writer.put(ErrorRow(name, arm, str(code), at))
        else:
            self.writer.put(ErrorRow(name, arm, str(code), at, request.request_id, request.key, request.assigned,
                                     request.period))

    def shadow(self, shadow: str, primary_arm: str, outcome: str, latency_s: float | None,
               labels: tuple[str, ...], agree: bool | None) -> None:
        self.writer.put(ShadowRow(self._experiment().name, shadow, primary_arm, outcome, latency_s, labels, agree,
                                  time.time()))
