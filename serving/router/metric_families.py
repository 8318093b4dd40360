"""The router's Prometheus metrics: every family it exports, in one registry per app.

``RouterMetrics`` owns a ``CollectorRegistry`` (no module-level state, so several apps can live in one
process, as the tests do) and the families dashboards read: requests, errors, latency, labels, confidence,
fallbacks, shares, shadow copies, feedback, the store's writer, requests in flight, and a generative answer's
stream figures (TTFT, inter-token gaps, tokens, tokens per second). ``serving.router.metrics.Recorder`` updates
them beside the report's windows; ``GET /metrics`` serves the registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PCounter

from experiments.generation import GenerationSample

CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
"""Buckets of ``router_prediction_confidence`` (a top-class probability)."""
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
"""Buckets of ``router_output_tokens_per_second``."""
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of every latency histogram (seconds)."""


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


class RouterMetrics:
    """The router's metric families for one experiment, registered in ``registry``."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.registry = r = CollectorRegistry()
        labels = ["experiment", "arm"]
        self.requests = PCounter("router_requests", "Requests answered, by the arm that served them", labels, registry=r)
        self.errors = PCounter("router_errors", "Failed requests by arm, code (HTTP status) and kind: 'client' for "
                               "the caller's mistakes (4xx), 'server' for upstream failures (5xx)",
                               labels + ["code", "kind"], registry=r)
        self.latency = Histogram("router_request_latency_seconds", "Router-side latency of answered requests",
                                 labels, buckets=LATENCY_BUCKETS, registry=r)
        self.labels = PCounter("router_predicted_labels", "Predicted labels by arm", labels + ["label"], registry=r)
        self.fallbacks = PCounter("router_fallbacks", "Requests moved to the fallback arm",
                                  ["experiment", "from_arm", "to_arm"], registry=r)
        self.unkeyed = PCounter("router_unkeyed_requests", "Requests without a sticky key (assigned at random)",
                                ["experiment"], registry=r)
        self.share = Gauge("router_arm_share", "Current traffic share of each arm", labels, registry=r)
        self.shadow = PCounter("router_shadow_requests", "Shadow copies by outcome (ok, error, dropped)",
                               labels + ["outcome"], registry=r)
        self.shadow_latency = Histogram("router_shadow_latency_seconds", "Latency of shadow requests", labels,
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.agreement = PCounter("router_shadow_agreement", "Shadow label vs primary label",
                                  labels + ["primary_arm", "agree"], registry=r)
        self.feedback = PCounter("router_feedback", "Feedback received and joined to its answer at once, by arm "
                                 "and whether the prediction was right", labels + ["correct"], registry=r)
        self.feedback_pending = PCounter("router_feedback_pending", "Feedback kept pending: its answer was not in "
                                         "the experiment store yet (it joins the answer when it arrives)",
                                         ["experiment"], registry=r)
        self.feedback_expired = PCounter("router_feedback_expired", "Pending feedback whose answer never reached "
                                         "the store within --feedback-pending-s, deleted by this replica",
                                         ["experiment"], registry=r)
        self.store_dropped = PCounter("router_store_dropped_records", "Records (answers, errors, shadow copies) "
                                      "dropped because the store's buffer was full", ["experiment"], registry=r)
        self.store_up = Gauge("router_store_up", "1 while the experiment store accepts this pod's writes",
                              ["experiment"], registry=r)
        self.store_buffered = Gauge("router_store_buffered_records", "Records waiting for the store's writer",
                                    ["experiment"], registry=r)
        self.confidence = Histogram("router_prediction_confidence", "Top-class probability of each prediction",
                                    labels, buckets=CONFIDENCE_BUCKETS, registry=r)
        self._generation_families(labels)
        self.inflight = InFlight()
        """Requests in flight (``inc()`` / ``dec()``), exported as ``router_inflight_requests``."""
        Gauge("router_inflight_requests", "Inference requests in flight", ["experiment"],
              registry=r).labels(experiment).set_function(lambda: self.inflight.value)
        self._children: dict[tuple, object] = {}

    def _generation_families(self, labels: list[str]) -> None:
        r = self.registry
        self.ttft = Histogram("router_time_to_first_token_seconds", "Generative answers: request in -> the first "
                              "token's response from the model, by the arm that served it", labels,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("router_inter_token_latency_seconds", "Generative answers: every gap between "
                             "successive tokens' responses", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.output_tokens = PCounter("router_output_tokens", "Generative answers: tokens generated", labels,
                                      registry=r)
        self.tokens_per_s = Histogram("router_output_tokens_per_second", "Generative answers: each stream's "
                                      "output tokens / (request in -> last token)", labels,
                                      buckets=TOKENS_PER_S_BUCKETS, registry=r)

    def child(self, metric, *values: str):
        """``metric.labels(experiment, *values)``, looked up once per label set: ``labels()`` costs a lock and
        a dict lookup of the joined values on every call, a few microseconds on each answered request."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.experiment, *values)
        return child

    def generation(self, arm: str, sample: GenerationSample) -> None:
        """A generative answer's stream figures: its TTFT, every inter-token gap, its tokens and tokens/s."""
        self.child(self.ttft, arm).observe(sample.ttft_ms / 1000.0)
        itl = self.child(self.itl, arm)
        for gap in sample.itl_ms:
            itl.observe(gap / 1000.0)
        self.child(self.output_tokens, arm).inc(sample.output_tokens)
        self.child(self.tokens_per_s, arm).observe(sample.tokens_per_s)
