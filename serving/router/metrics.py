"""What the router records: each request's outcome, into Prometheus metrics for dashboards and into recent
samples for the report.

``Recorder`` updates the app's metric families (``serving.router.metric_families.RouterMetrics``, one registry
per app) and keeps bounded in-memory windows the report's statistics read:
recent latencies per arm, predicted-label counts, shadow agreement, feedback outcomes, and the recent
request ids that feedback refers to. Without an experiment store it also feeds an in-memory
``experiments.judge.Judge`` (``start_judge``): every answer, final server error and feedback with its unit (the
sticky key) and period, in O(1); with a store the judge reads the store's unit table instead.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from experiments.arm_record import ArmRecord, Window
from experiments.generation import GenerationSample, GenerationTotals
from experiments.judge import Judge, JudgeConfig, UnitTable
from experiments.judge.snapshot import Moments
from serving.router.answer_texts import AnswerTexts
from serving.router.metric_families import RouterMetrics

log = logging.getLogger(__name__)


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


class Recorder:
    """Records every request into Prometheus metrics and the report's windows."""

    def __init__(self, experiment: str, latency_window: int = 50_000, request_log_size: int = 200_000,
                 text_keep_s: float = 600.0):
        self.experiment = experiment
        self.texts = AnswerTexts(text_keep_s, request_log_size)
        """Generative answers' texts, kept ``text_keep_s`` for feedback that scores them."""
        self.metrics = RouterMetrics(experiment)
        """The Prometheus metric families this recorder updates."""
        self.registry = self.metrics.registry
        """The app's metrics registry (``GET /metrics``; other parts register theirs in it too)."""
        self.inflight = self.metrics.inflight
        """Requests in flight (``inc()`` / ``dec()``), exported as ``router_inflight_requests``."""
        self._window = latency_window
        self._log_size = request_log_size
        self._lock = threading.Lock()  # the report reads from a worker thread
        self.arms: dict[str, ArmRecord] = {}
        self.shadow: dict[str, ArmRecord] = {}
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._feedback_seen: set[str] = set()
        self.sink = None
        """The experiment store's ``RecordSink`` (``serving.router.record_sink``), or None: no store."""
        self.judge: Judge | None = None
        """The in-memory judge (``start_judge``; routers without a store), or None."""

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
            self.metrics.share.labels(self.experiment, arm).set(share)

    def unkeyed(self) -> None:
        self.metrics.unkeyed.labels(self.experiment).inc()

    def served(self, request_id: str, arm: str, latency_s: float, labels: tuple[str, ...], key: str | None = None,
               assigned: str | None = None, confidences: Sequence[float] = (), period: int | None = None,
               generation: tuple[GenerationSample, str] | None = None) -> None:
        """An answered request; ``key`` (the sticky key), ``assigned`` (its arm before any fallback) and
        ``period`` (in force when it was assigned) go to the store only, where they make its unit-table row;
        ``confidences``: the top-class probability of each prediction, when known; ``generation``: a generative
        answer's stream figures and text."""
        sample, text = generation if generation is not None else (None, None)
        if self.sink is not None:
            self.sink.served(request_id, arm, latency_s, labels, key, assigned, confidences, period, generation)
        with self._lock:
            rec = self._arm(arm)
            rec.requests += 1
            rec.latency.add(latency_s)
            rec.labels.update(labels)
            if confidences:
                c = rec.confidence
                rec.confidence = Moments(c.n + len(confidences), c.total + sum(confidences),
                                         c.total_sq + sum(x * x for x in confidences))
                observe = self.metrics.child(self.metrics.confidence, arm).observe
                for x in confidences:
                    observe(x)
            if sample is not None:
                if rec.generation is None:
                    rec.generation = GenerationTotals()
                rec.generation.add(sample)
            if self.judge is not None:
                self._judge("answered", arm, latency_s * 1000.0, labels, confidences or None, key, assigned, period,
                            generation=sample)
            self._served[request_id] = Served(arm, labels, key, assigned, period)
            if text is not None:
                self.texts.keep(request_id, text)
            self._served.move_to_end(request_id)
            while len(self._served) > self._log_size:
                old, _ = self._served.popitem(last=False)
                self._feedback_seen.discard(old)
        m = self.metrics
        m.child(m.requests, arm).inc()
        m.child(m.latency, arm).observe(latency_s)
        for label in labels:
            m.child(m.labels, arm, label).inc()
        if sample is not None:
            m.generation(arm, sample)

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
        self.metrics.errors.labels(self.experiment, arm, str(code), "server").inc()

    def client_error(self, arm: str, code: int | str) -> None:
        """A request refused for the caller's mistake: recorded apart, never against ``arm``."""
        if self.sink is not None:
            self.sink.error(arm, code)
        with self._lock:
            self._arm(arm).client_errors[str(code)] += 1
        self.metrics.errors.labels(self.experiment, arm, str(code), "client").inc()

    def fallback(self, from_arm: str, to_arm: str) -> None:
        with self._lock:
            self._arm(to_arm).fallbacks_in += 1
        self.metrics.fallbacks.labels(self.experiment, from_arm, to_arm).inc()

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
                    self.metrics.agreement.labels(self.experiment, shadow, primary_arm, str(agree).lower()).inc()
        self.metrics.shadow.labels(self.experiment, shadow, outcome).inc()
        if latency_s is not None and labels is not None:
            self.metrics.shadow_latency.labels(self.experiment, shadow).observe(latency_s)

    def shadow_dropped(self, shadow: str, primary_arm: str = "") -> None:
        if self.sink is not None:
            self.sink.shadow(shadow, primary_arm, "dropped", None, (), None)
        with self._lock:
            self._arm(shadow, self.shadow).shadow_dropped += 1
        self.metrics.shadow.labels(self.experiment, shadow, "dropped").inc()

    def answer_text(self, request_id: str) -> str | None:
        """The kept text of a generative answer this replica served (``AnswerTexts.get``)."""
        with self._lock:
            return self.texts.get(request_id)

    def quality(self, request_id: str, score: float) -> str | None:
        """Record a quality score in [0, 1] of a served generative answer: its arm, or None if the id is unknown.

        Raises ``KeyError`` when the request already has feedback."""
        with self._lock:
            served = self._served.get(request_id)
            if served is None:
                return None
            if request_id in self._feedback_seen:
                raise KeyError(request_id)
            self._feedback_seen.add(request_id)
            self.texts.drop(request_id)
            self._record_quality(served.arm, score)
            if self.judge is not None:
                self._judge("quality", served.arm, score, served.key, served.period, served.assigned)
        return served.arm

    def _record_quality(self, arm: str, score: float) -> None:
        rec = self._arm(arm)
        if rec.generation is None:
            rec.generation = GenerationTotals()
        rec.generation.add_quality(score)

    def count_quality(self, arm: str, score: float) -> None:
        """Quality feedback the store accepted (for an answer of any replica): this pod's window."""
        with self._lock:
            self._record_quality(arm, score)

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
        self.metrics.feedback.labels(self.experiment, served.arm, str(correct).lower()).inc()
        return served.arm, correct

    def lookup(self, request_id: str) -> Served | None:
        """What this replica remembers of a request it served, or None."""
        with self._lock:
            return self._served.get(request_id)

    def count_pending_feedback(self) -> None:
        """Feedback the store keeps pending until its answer arrives (``router_feedback_pending``)."""
        self.metrics.feedback_pending.labels(self.experiment).inc()

    def count_expired_feedback(self, n: int) -> None:
        """Pending feedback this replica expired (``router_feedback_expired``)."""
        self.metrics.feedback_expired.labels(self.experiment).inc(n)

    def count_feedback(self, arm: str, correct: bool) -> None:
        """Feedback the store accepted (for an answer of any replica): this pod's metric and window."""
        with self._lock:
            rec = self._arm(arm)
            rec.feedback_total += 1
            rec.feedback_correct += correct
        self.metrics.feedback.labels(self.experiment, arm, str(correct).lower()).inc()

    def activity(self) -> int:
        """Everything this replica has counted so far (answers, errors, feedback): it moves while traffic flows."""
        with self._lock:
            return sum(r.requests + sum(r.errors.values()) + sum(r.client_errors.values()) + r.feedback_total
                       for r in self.arms.values())

    def snapshot(self) -> dict[str, dict[str, ArmRecord]]:
        """A consistent copy of the report's data; in it ``latency`` is a plain array of the window."""
        with self._lock:
            def copy(table: dict[str, ArmRecord]) -> dict[str, ArmRecord]:
                return {name: replace(rec, latency=rec.latency.values(), errors=Counter(rec.errors),
                                      client_errors=Counter(rec.client_errors), labels=Counter(rec.labels),
                                      generation=rec.generation and replace(rec.generation))
                        for name, rec in table.items()}
            return {"arms": copy(self.arms), "shadow": copy(self.shadow)}
