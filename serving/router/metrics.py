"""What the router records: Prometheus metrics for dashboards, and recent samples for the report.

``Recorder`` owns a per-app ``CollectorRegistry`` (no module-level state, so several apps can live
in one process, as the tests do) plus bounded in-memory windows the report's statistics read:
recent latencies per arm, predicted-label counts, shadow agreement, feedback outcomes, and the recent
request ids that feedback refers to. Without an experiment store it also feeds an in-memory
``experiments.judge.Judge`` (``start_judge``): every answer, final server error and feedback with its unit (the
sticky key) and period, in O(1); with a store the judge reads the store's unit table instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PCounter

from experiments.arm_record import ArmRecord, Window
from experiments.generation import GenerationSample, GenerationTotals
from experiments.judge import Judge, JudgeConfig, UnitTable
from experiments.judge.snapshot import Moments

log = logging.getLogger(__name__)

CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class InFlight:
    """Inference requests in flight, HTTP and gRPC: a plain count kept by the event loop (both front doors
    run on it) that the ``router_inflight_requests`` gauge reads when scraped, so a request pays no
    Prometheus lock to enter and leave."""

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


@dataclass(frozen=True, slots=True)
class RequestRef:
    """Whose a request's outcome is: its id, its sticky key, the arm it was assigned and the period (the
    store revision, or the in-memory weight period) in force when it was assigned."""

    request_id: str
    key: str | None
    assigned: str
    period: int


@dataclass(frozen=True, slots=True)
class Served:
    """What the router remembers of a served request, for feedback: the arm that served it, its labels, and
    (for the in-memory judge) its sticky key, assigned arm and period."""

    arm: str
    labels: tuple[str, ...]
    key: str | None = None
    assigned: str | None = None
    period: int | None = None
    text: str | None = None
    """A generative answer's text, kept for feedback that scores it against a reference."""
    at: float = 0.0
    """``time.monotonic()`` when it was served (the text is dropped ``feedback_pending_s`` later)."""


class Recorder:
    """Records every request into Prometheus metrics and the report's windows."""

    def __init__(self, experiment: str, latency_window: int = 50_000, request_log_size: int = 200_000):
        self.experiment = experiment
        self.registry = CollectorRegistry()
        self._window = latency_window
        self._log_size = request_log_size
        self._lock = threading.Lock()  # the report reads from a worker thread
        self.arms: dict[str, ArmRecord] = {}
        self.shadow: dict[str, ArmRecord] = {}
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._feedback_seen: set[str] = set()
        labels = ["experiment", "arm"]
        r = self.registry
        self.m_requests = PCounter("router_requests", "Requests answered, by the arm that served them", labels, registry=r)
        self.m_errors = PCounter("router_errors", "Failed requests by arm, code (HTTP status) and kind: 'client' for "
                                 "the caller's mistakes (4xx), 'server' for upstream failures (5xx)",
                                 labels + ["code", "kind"], registry=r)
        self.m_latency = Histogram("router_request_latency_seconds", "Router-side latency of answered requests",
                                   labels, buckets=LATENCY_BUCKETS, registry=r)
        self.m_labels = PCounter("router_predicted_labels", "Predicted labels by arm", labels + ["label"], registry=r)
        self.m_fallbacks = PCounter("router_fallbacks", "Requests moved to the fallback arm", ["experiment", "from_arm", "to_arm"], registry=r)
        self.m_unkeyed = PCounter("router_unkeyed_requests", "Requests without a sticky key (assigned at random)", ["experiment"], registry=r)
        self.m_weight = Gauge("router_arm_share", "Current traffic share of each arm", labels, registry=r)
        self.m_shadow = PCounter("router_shadow_requests", "Shadow copies by outcome (ok, error, dropped)", labels + ["outcome"], registry=r)
        self.m_shadow_latency = Histogram("router_shadow_latency_seconds", "Latency of shadow requests", labels,
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.m_agreement = PCounter("router_shadow_agreement", "Shadow label vs primary label", labels + ["primary_arm", "agree"], registry=r)
        self.m_feedback = PCounter("router_feedback", "Feedback received and joined to its answer at once, by arm "
                                   "and whether the prediction was right", labels + ["correct"], registry=r)
        self.m_feedback_pending = PCounter("router_feedback_pending", "Feedback kept pending: its answer was not in "
                                           "the experiment store yet (it joins the answer when it arrives)",
                                           ["experiment"], registry=r)
        self.m_feedback_expired = PCounter("router_feedback_expired", "Pending feedback whose answer never reached "
                                           "the store within --feedback-pending-s, deleted by this replica",
                                           ["experiment"], registry=r)
        self.m_inflight = Gauge("router_inflight_requests", "Inference requests in flight", ["experiment"], registry=r)
        self.m_store_dropped = PCounter("router_store_dropped_records", "Records (answers, errors, shadow copies) "
                                        "dropped because the store's buffer was full", ["experiment"], registry=r)
        self.m_store_up = Gauge("router_store_up", "1 while the experiment store accepts this pod's writes",
                                ["experiment"], registry=r)
        self.m_store_buffered = Gauge("router_store_buffered_records", "Records waiting for the store's writer",
                                      ["experiment"], registry=r)
        self.m_ttft = Histogram("router_time_to_first_token_seconds", "Generative answers: request in -> the first "
                                "token's response from the model, by the arm that served it", labels,
                                buckets=LATENCY_BUCKETS, registry=r)
        self.m_itl = Histogram("router_inter_token_latency_seconds", "Generative answers: every gap between "
                               "successive tokens' responses", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.m_output_tokens = PCounter("router_output_tokens", "Generative answers: tokens generated", labels,
                                        registry=r)
        self.m_tokens_per_s = Histogram("router_output_tokens_per_second", "Generative answers: each stream's "
                                        "output tokens / (request in -> last token)", labels,
                                        buckets=TOKENS_PER_S_BUCKETS, registry=r)
        self.m_confidence = Histogram("router_prediction_confidence", "Top-class probability of each prediction",
                                      labels, buckets=CONFIDENCE_BUCKETS, registry=r)
        self.sink = None
        """The experiment store's ``RecordSink`` (``serving.router.record_sink``), or None: no store."""
        self.inflight = InFlight()
        """Requests in flight (``inc()`` / ``dec()``), exported as ``router_inflight_requests``."""
        self.judge: Judge | None = None
        """The in-memory judge (``start_judge``; routers without a store), or None."""
        self.m_inflight.labels(experiment).set_function(lambda: self.inflight.value)
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *values: str):
        """``metric.labels(experiment, *values)``, looked up once per label set: ``labels()`` costs a lock and
        a dict lookup of the joined values on every call, a few microseconds on each answered request."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.experiment, *values)
        return child

    def _arm(self, name: str, table: dict[str, ArmRecord] | None = None) -> ArmRecord:
        table = self.arms if table is None else table
        if name not in table:
            table[name] = ArmRecord(latency=Window(self._window))
        return table[name]

    def start_judge(self, arms: Sequence[str], shares: dict[str, float], period: int,
                    config: JudgeConfig | None = None) -> None:
        """Judge this replica's traffic in memory from now on (a router without a store), starting in ``period``."""
        with self._lock:
            self.judge = Judge(config, arms, shares, period)

    def experiment_changed(self, arms: Sequence[str], shares: dict[str, float], period: int) -> None:
        """The weights changed (a new ``period``): the in-memory judge starts a period with them. New arms make
        a new experiment: the judge starts afresh (its earlier traffic compared other arms)."""
        with self._lock:
            judge = self.judge
            if judge is None or period == judge.period:
                return
            if tuple(arms) != judge.arms:
                log.warning("the arms changed (%s -> %s): the in-memory judge starts afresh", judge.arms, tuple(arms))
                self.judge = Judge(judge.config, arms, shares, period)
            else:
                judge.weights_changed(shares, period)

    def unit_table(self) -> UnitTable | None:
        """The in-memory judge's table now (None without one), taken under the recorder's lock."""
        with self._lock:
            return None if self.judge is None else self.judge.table()

    def _judge(self, method: str, *args, **kwargs) -> None:
        """One sample to the in-memory judge (under ``_lock``). A request of an arm or period the judge no longer
        knows (in flight across an arms change) is left out, never an error on the request path."""
        try:
            getattr(self.judge, method)(*args, **kwargs)
        except (KeyError, ValueError) as e:
            log.debug("left out of the in-memory judge: %s", e)

    def set_shares(self, shares: dict[str, float]) -> None:
        for arm, share in shares.items():
            self._arm(arm)
            self.m_weight.labels(self.experiment, arm).set(share)

    def unkeyed(self) -> None:
        self.m_unkeyed.labels(self.experiment).inc()

    def served(self, request_id: str, arm: str, latency_s: float, labels: tuple[str, ...], key: str | None = None,
               assigned: str | None = None, confidences: Sequence[float] = (), period: int | None = None,
               generation: tuple[GenerationSample, str] | None = None) -> None:
        """An answered request; ``key`` (the sticky key), ``assigned`` (its arm before any fallback) and
        ``period`` (in force when it was assigned) go to the store only, where they make its unit-table row;
        ``confidences``: the top-class probability of each prediction, when known; ``generation``: a generative
        answer's stream figures and text."""
        sample, text = generation if generation is not None else (None, None)
        if self.sink is not None:
            self.sink.served(request_id, arm, latency_s, labels, key, assigned, confidences, period)
        with self._lock:
            rec = self._arm(arm)
            rec.requests += 1
            rec.latency.add(latency_s)
            rec.labels.update(labels)
            if confidences:
                c = rec.confidence
                rec.confidence = Moments(c.n + len(confidences), c.total + sum(confidences),
                                         c.total_sq + sum(x * x for x in confidences))
                observe = self._child(self.m_confidence, arm).observe
                for x in confidences:
                    observe(x)
            if sample is not None:
                if rec.generation is None:
                    rec.generation = GenerationTotals()
                rec.generation.add(sample)
            if self.judge is not None:
                self._judge("answered", arm, latency_s * 1000.0, labels, confidences or None, key, assigned, period,
                            generation=sample)
            self._served[request_id] = Served(arm, labels, key, assigned, period, text, time.monotonic())
            self._served.move_to_end(request_id)
            while len(self._served) > self._log_size:
                old, _ = self._served.popitem(last=False)
                self._feedback_seen.discard(old)
        self._child(self.m_requests, arm).inc()
        self._child(self.m_latency, arm).observe(latency_s)
        for label in labels:
            self._child(self.m_labels, arm, label).inc()
        if sample is not None:
            self._generation_metrics(arm, sample)

    def _generation_metrics(self, arm: str, sample: GenerationSample) -> None:
        self._child(self.m_ttft, arm).observe(sample.ttft_ms / 1000.0)
        itl = self._child(self.m_itl, arm)
        for gap in sample.itl_ms:
            itl.observe(gap / 1000.0)
        self._child(self.m_output_tokens, arm).inc(sample.output_tokens)
        self._child(self.m_tokens_per_s, arm).observe(sample.tokens_per_s)

    def error(self, arm: str, code: int | str, request: RequestRef | None = None) -> None:
        """A server-side failure (the upstream's or the router's): it counts against ``arm``. ``request``: the
        request whose final outcome it is (the error its caller got), so the store counts it for its unit;
        None for an attempt that a fallback followed."""
        if self.sink is not None:
            self.sink.error(arm, code, request)
        with self._lock:
            self._arm(arm).errors[str(code)] += 1
            if self.judge is not None and request is not None:
                self._judge("failed", arm, unit=request.key, assigned=request.assigned, period=request.period)
        self.m_errors.labels(self.experiment, arm, str(code), "server").inc()

    def client_error(self, arm: str, code: int | str) -> None:
        """A request refused for the caller's mistake: recorded apart, never against ``arm``."""
        if self.sink is not None:
            self.sink.error(arm, code)
        with self._lock:
            self._arm(arm).client_errors[str(code)] += 1
        self.m_errors.labels(self.experiment, arm, str(code), "client").inc()

    def fallback(self, from_arm: str, to_arm: str) -> None:
        with self._lock:
            self._arm(to_arm).fallbacks_in += 1
        self.m_fallbacks.labels(self.experiment, from_arm, to_arm).inc()

    def shadow_result(self, shadow: str, primary_arm: str, latency_s: float | None,
                      primary: tuple[str, ...], labels: tuple[str, ...] | None) -> None:
        """A finished shadow copy: ``labels`` None means it failed."""
        outcome = "error" if labels is None else "ok"
        if self.sink is not None:
            agree = primary == labels if labels is not None and primary and len(primary) == len(labels) else None
            self.sink.shadow(shadow, primary_arm, outcome, latency_s if labels is not None else None,
                             labels or (), agree)
        with self._lock:
            rec = self._arm(shadow, self.shadow)
            if labels is None:
                rec.errors["error"] += 1
            else:
                rec.requests += 1
                rec.latency.add(latency_s)
                rec.labels.update(labels)
                if primary and len(primary) == len(labels):
                    agree = primary == labels
                    rec.shadow_compared += 1
                    rec.shadow_agree += agree
                    self.m_agreement.labels(self.experiment, shadow, primary_arm, str(agree).lower()).inc()
        self.m_shadow.labels(self.experiment, shadow, outcome).inc()
        if latency_s is not None and labels is not None:
            self.m_shadow_latency.labels(self.experiment, shadow).observe(latency_s)

    def shadow_dropped(self, shadow: str, primary_arm: str = "") -> None:
        if self.sink is not None:
            self.sink.shadow(shadow, primary_arm, "dropped", None, (), None)
        with self._lock:
            self._arm(shadow, self.shadow).shadow_dropped += 1
        self.m_shadow.labels(self.experiment, shadow, "dropped").inc()

    def feedback(self, request_id: str, labels: tuple[str, ...]) -> tuple[str, bool] | None:
        """Record the true label(s) of a served request: (arm, correct), or None if the id is unknown.

        Raises ``KeyError`` when the request already has feedback.
        """
        with self._lock:
            served = self._served.get(request_id)
            if served is None:
                return None
            if request_id in self._feedback_seen:
                raise KeyError(request_id)
            self._feedback_seen.add(request_id)
            correct = served.labels[: len(labels)] == labels
            rec = self._arm(served.arm)
            rec.feedback_total += 1
            rec.feedback_correct += correct
            if self.judge is not None:
                self._judge("feedback", served.arm, correct, served.key, served.period, served.assigned)
        self.m_feedback.labels(self.experiment, served.arm, str(correct).lower()).inc()
        return served.arm, correct

    def lookup(self, request_id: str) -> Served | None:
        """What this replica remembers of a request it served, or None."""
        with self._lock:
            return self._served.get(request_id)

    def count_pending_feedback(self) -> None:
        """Feedback the store keeps pending until its answer arrives (``router_feedback_pending``)."""
        self.m_feedback_pending.labels(self.experiment).inc()

    def count_expired_feedback(self, n: int) -> None:
        """Pending feedback this replica expired (``router_feedback_expired``)."""
        self.m_feedback_expired.labels(self.experiment).inc(n)

    def count_feedback(self, arm: str, correct: bool) -> None:
        """Feedback the store accepted (for an answer of any replica): this pod's metric and window."""
        with self._lock:
            rec = self._arm(arm)
            rec.feedback_total += 1
            rec.feedback_correct += correct
        self.m_feedback.labels(self.experiment, arm, str(correct).lower()).inc()

    def snapshot(self) -> dict[str, dict[str, ArmRecord]]:
        """A consistent copy of the report's data; in it ``latency`` is a plain array of the window."""
        with self._lock:
            def copy(table: dict[str, ArmRecord]) -> dict[str, ArmRecord]:
                return {name: replace(rec, latency=rec.latency.values(), errors=Counter(rec.errors),
                                      client_errors=Counter(rec.client_errors), labels=Counter(rec.labels),
                                      generation=rec.generation and replace(rec.generation))
                        for name, rec in table.items()}
            return {"arms": copy(self.arms), "shadow": copy(self.shadow)}
