"""Locust users for the served sentiment model: real held-out reviews, one statistics row per variant.

Each request is a KServe v2 ``infer`` call with held-out review text(s) and a stable user id in
``X-User-Id`` (so the router's sticky assignment is exercised). Its row in Locust's statistics is named
after the variant that served it (the router's ``X-Variant`` header, or ``MODEL vVERSION`` when Triton
is hit directly), with type ``infer``. A response counts as a failure unless it is a valid prediction:
HTTP 200, one probability row per text (finite, in [0, 1], summing to 1), one known label per text and
a variant. A user served by another variant than before is counted in a ``sticky`` / ``variant switch``
row (expected after a weight change, a broken sticky assignment otherwise), or with
``--sticky-check fail`` fails that request.

Who sends what (``--user-texts``, ``--user-activity``): by default every request draws its texts from all of
them and every user id is alike. Real users differ, and the judge's statistics must hold when they do: with
``--user-texts window`` each user id draws only from its own window of the texts sorted by label, then length
(``--user-text-window`` of them, placed by a hash of the id: the same in every Locust process), so users differ
in label mix and text length; with ``--user-activity s`` the open loop's arrivals pick the ``k``-th user id
with weight ``k^-s`` (Zipf), so a few heavy users send much of the traffic.

Three user classes, picked by name on Locust's command line (``loadtests.run`` does it for you):

- ``ClosedLoopUser``: N users, each sends, waits for the answer (and ``--think-time``), sends again.
- ``OpenLoopUser``: arrival generators; together they send ``--arrival-rate`` requests per second with
  Poisson (exponential) inter-arrival times, whether or not earlier answers came back.
- ``GrpcUser``: ``ClosedLoopUser`` over gRPC (``tritonclient.grpc``), to the router's ``--grpc-port`` or,
  with ``--target triton``, to Triton's gRPC port: ``--grpc-host 127.0.0.1:8081`` (or ``--host
  grpc://127.0.0.1:8081``). Its feedback goes to the router's HTTP ``--host``, with the request id the
  gRPC answer carries (``loadtests.run`` picks it with ``--protocol grpc``).

    locust -f loadtests/locustfile.py --headless -u 10 -t 30s --host http://127.0.0.1:8080 ClosedLoopUser
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gevent
import locust.stats
from gevent.pool import Pool
from locust import FastHttpUser, User, events, task
from locust.runners import WorkerRunner

from export.contract import CONTRACT
from loadtests import measure
from loadtests.config import add_locust_arguments
from loadtests.protocol import check_prediction, infer_body
from loadtests.users import text_order, window_pick, zipf_weights
from serving.client import text_input

INFER = "infer"
FEEDBACK = "feedback"
NO_VARIANT = "(no variant)"
STICKY, VARIANT_SWITCH = "sticky", "variant switch"


@events.init_command_line_parser.add_listener
def _register_options(parser, **_kwargs) -> None:
    add_locust_arguments(parser)


measure.register(events)  # every inference request's exact time -> PREFIX_latency-PID.csv (loadtests.measure)


@events.test_stop.add_listener
def _let_csv_catch_up(environment, **_kwargs) -> None:
    """Locust writes its CSV every CSV_STATS_INTERVAL_SEC and not again at exit, so the last second of a
    run would be missing from ``_stats.csv``; waiting here (after the users stopped, before the process
    exits) lets the writer record the final totals, including the workers' last reports."""
    if not isinstance(environment.runner, WorkerRunner):
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.5)


@dataclass(frozen=True)
class Workload:
    """What every user of one Locust process sends, built once from the parsed options."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    label_set: frozenset[str]
    path: str
    """Inference path relative to --host (the versioned path is added per user for target triton)."""
    target: str
    model: str
    versions: tuple[str, ...]
    batch_size: int
    feedback_path: str | None
    feedback_fraction: float
    sticky_check: str
    order: tuple[int, ...] | None = None
    """``--user-texts window``: the texts' indices sorted by label, then length; None: every user draws from all."""
    window: int = 0
    """Texts in each user's window."""

    def pick(self, user_id: str, rng: random.Random) -> int:
        """The index of a text for ``user_id`` to send: any text, or one of its own window's."""
        if self.order is None:
            return rng.randrange(len(self.texts))
        return window_pick(self.order, self.window, user_id, rng)

    @classmethod
    def from_options(cls, opts) -> Workload:
        path = Path(opts.texts)
        if not path.is_file():
            raise FileNotFoundError(f"--texts {path} does not exist; run `make export` (it writes "
                                    "runs/NAME/merged/heldout.jsonl) or pass another JSONL file")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if isinstance(r, dict) and str(r.get("text", "")).strip()]
        if not rows:
            raise ValueError(f"--texts {path} holds no {{\"text\", \"label\"}} rows")
        router = opts.target == "router"
        name = opts.experiment if router else opts.model
        texts, labels = tuple(str(r["text"]) for r in rows), tuple(str(r.get("label", "")) for r in rows)
        windowed = opts.user_texts == "window"
        return cls(
            texts=texts,
            labels=labels,
            label_set=frozenset(str(r["label"]) for r in rows if r.get("label") is not None),
            path=f"/v2/models/{name}",
            target=opts.target,
            model=opts.model,
            versions=tuple(v.strip() for v in opts.versions.split(",") if v.strip()) if not router else (),
            batch_size=opts.batch_size,
            feedback_path=f"/v2/experiments/{opts.experiment}/feedback" if router else None,
            feedback_fraction=opts.feedback_fraction if router else 0.0,
            sticky_check=opts.sticky_check,
            order=text_order(texts, labels) if windowed else None,
            window=max(1, round(opts.user_text_window * len(texts))),
        )


def workload_of(environment) -> Workload:
    """The process's Workload, read once and kept on the Locust environment its users share."""
    workload = getattr(environment, "tunestack_workload", None)
    if workload is None:
        workload = environment.tunestack_workload = Workload.from_options(environment.parsed_options)
    return workload


class _ReviewUser(FastHttpUser):
    """Sends held-out reviews to the router or to Triton and names each request by its variant."""

    abstract = True

    def __init__(self, environment) -> None:
        opts = environment.parsed_options
        self.network_timeout = self.connection_timeout = opts.request_timeout
        super().__init__(environment)
        self.workload = workload_of(environment)
        self.rng = random.Random()
        self.variant_of: dict[str, str] = {}  # user id -> the variant that served it first

    def predict(self, user_id: str) -> None:
        """One inference request for ``user_id``, reported under the name of the variant that served it."""
        w = self.workload
        picks = [w.pick(user_id, self.rng) for _ in range(w.batch_size)]
        path, version = w.path, ""
        if w.versions:  # target triton: each user sticks to one version, as the router's users do to an arm
            version = w.versions[int(uuid.uuid5(uuid.NAMESPACE_OID, user_id)) % len(w.versions)]
            path += f"/versions/{version}"
        headers = {"X-User-Id": user_id}
        with self.client.post(f"{path}/infer", json=infer_body([w.texts[i] for i in picks]), headers=headers,
                              name=NO_VARIANT, catch_response=True) as response:
            response.request_meta["request_type"] = INFER
            request_id = self._judge(response, user_id, len(picks), version)
        if request_id and w.feedback_path and self.rng.random() < w.feedback_fraction:
            self.feedback(request_id, [w.labels[i] for i in picks])

    def _judge(self, response, user_id: str, count: int, version: str) -> str | None:
        """Name the request by its variant and mark it failed unless it is a valid prediction."""
        w = self.workload
        if response.status_code != 200:
            response.request_meta["name"] = self._variant_name(response, None, version) or NO_VARIANT
            detail = (response.text or "")[:200] if response.status_code else repr(response.error)
            response.failure(f"HTTP {response.status_code}: {detail}")
            return None
        try:
            payload = response.json()
        except (ValueError, TypeError) as e:
            response.failure(f"answer is not JSON: {e}")
            return None
        variant = self._variant_name(response, payload, version)
        if variant is None:
            response.failure("answer names no variant (no X-Variant header, parameters.variant or model_version)")
            return None
        response.request_meta["name"] = variant
        problem = check_prediction(payload, count, w.label_set)
        before = self.variant_of.setdefault(user_id, variant)
        if problem is None and before != variant:
            self.variant_of[user_id] = variant
            switch = f"user {user_id} was served by {before}, now by {variant}"
            if w.sticky_check == "fail":
                problem = f"sticky assignment broken: {switch}"
            else:  # counted: expected after a weight change (a canary ramp), a broken assignment otherwise
                self.environment.events.request.fire(request_type=STICKY, name=VARIANT_SWITCH, response_time=0,
                                                     response_length=0, context={}, exception=None)
        if problem:
            response.failure(problem)
            return None
        response.success()
        return (response.headers or {}).get("X-Request-Id")

    def _variant_name(self, response, payload: dict | None, version: str) -> str | None:
        if self.workload.target == "router":
            params = (payload or {}).get("parameters") or {}
            return (response.headers or {}).get("X-Variant") or params.get("variant")
        served = (payload or {}).get("model_version") or version
        return f"{self.workload.model} v{served}" if served else None

    def feedback(self, request_id: str, labels: list[str]) -> None:
        send_feedback(self.client, self.workload.feedback_path, request_id, labels)


def send_feedback(client, path: str, request_id: str, labels: list[str]) -> None:
    """Tell the router the true label(s) of an answered request: its report gains accuracy per arm. 202: a
    replica whose store does not hold the answer yet keeps the feedback until it arrives."""
    with client.post(path, json={"id": request_id, "labels": labels}, name=FEEDBACK, catch_response=True) as r:
        r.request_meta["request_type"] = FEEDBACK
        if r.status_code not in (200, 202):
            r.failure(f"feedback refused: HTTP {r.status_code}: {(r.text or '')[:200]}")


class ClosedLoopUser(_ReviewUser):
    """A user with a stable id: send a review, wait for the answer and ``--think-time`` seconds, repeat."""

    def __init__(self, environment) -> None:
        super().__init__(environment)
        # Stable and reproducible: the n-th user of Locust process k is "user-k-n" in every run.
        count = environment.tunestack_users = getattr(environment, "tunestack_users", 0) + 1
        self.user_id = f"user-{max(getattr(environment.runner, 'worker_index', 0), 0)}-{count}"

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    @task
    def review(self) -> None:
        self.predict(self.user_id)


class OpenLoopUser(_ReviewUser):
    """An arrival generator: Poisson arrivals at ``--arrival-rate / --users`` per second, not waiting for answers.

    Each arrival is a visitor drawn from ``--user-population`` stable ids (alike, or by ``--user-activity``'s
    Zipf weights), sent from its own greenlet.
    When ``--max-in-flight`` requests of this process are already waiting, the arrival is dropped and
    counted as a failure named ``(dropped)``: the client, not the server, is then the limit.
    """

    def __init__(self, environment) -> None:
        opts = environment.parsed_options
        self.concurrency = opts.max_in_flight  # connection pool of this user's client
        super().__init__(environment)
        self.pool = Pool(opts.max_in_flight)
        self.rate = opts.arrival_rate / max(1, opts.num_users or 1)
        self.population = opts.user_population
        self.activity = zipf_weights(opts.user_population, opts.user_activity) if opts.user_activity > 0 else None
        """Cumulative weights of the user ids (Zipf), or None: every id alike."""
        if self.rate <= 0:
            raise ValueError("OpenLoopUser needs --arrival-rate > 0 (requests per second)")

    def on_start(self) -> None:
        self.next_arrival = time.perf_counter()

    def wait_time(self) -> float:
        """Time until the next arrival: exponential gaps on a fixed schedule, so a slow answer delays nothing.

        Waiting here rather than inside the task lets Locust stop or remove this user between arrivals."""
        self.next_arrival += self.rng.expovariate(self.rate)
        return max(0.0, self.next_arrival - time.perf_counter())

    @task
    def arrival(self) -> None:
        if self.pool.full():
            self.environment.events.request.fire(
                request_type=INFER, name="(dropped)", response_time=0, response_length=0, context={},
                exception=RuntimeError(f"client limit: {self.pool.size} requests already in flight"))
            return
        if self.activity is None:
            k = self.rng.randrange(self.population)
        else:
            k = self.rng.choices(range(self.population), cum_weights=self.activity)[0]
        self.pool.spawn(self.predict, f"visitor-{k}")

    def on_stop(self) -> None:
        self.pool.kill(block=False)


def _grpc_client_module():
    """``tritonclient.grpc``, with gRPC switched to gevent first: without it every Locust user of the process
    shares one blocked thread and the run serialises (or hangs at the end)."""
    import grpc.experimental.gevent

    grpc.experimental.gevent.init_gevent()
    import tritonclient.grpc

    return tritonclient.grpc


class GrpcUser(User):
    """``ClosedLoopUser`` over gRPC: the same reviews, user ids, checks and per-variant rows. The address is
    ``--grpc-host HOST:PORT``, else ``--host grpc://HOST:PORT``; feedback (target router, ``--feedback-fraction``)
    goes over HTTP to ``--host`` when that is the router's ``http://`` URL."""

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.grpc = _grpc_client_module()
        self.workload = workload_of(environment)
        self.timeout = environment.parsed_options.request_timeout
        opts = environment.parsed_options
        address = getattr(opts, "grpc_host", "") or (self.host or "").split("://", 1)[-1].rstrip("/")
        self.client = self.grpc.InferenceServerClient(address)
        self.http = None  # the router's HTTP endpoint, for feedback
        if self.workload.feedback_fraction > 0 and (self.host or "").startswith(("http://", "https://")):
            from locust.contrib.fasthttp import FastHttpSession

            self.http = FastHttpSession(self.host, environment.events.request, self)
        self.sent = 0
        self.outputs = [self.grpc.InferRequestedOutput(n) for n in (CONTRACT.output_probabilities, CONTRACT.output_label)]
        self.rng = random.Random()
        count = environment.tunestack_users = getattr(environment, "tunestack_users", 0) + 1
        self.user_id = f"grpc-user-{max(getattr(environment.runner, 'worker_index', 0), 0)}-{count}"
        self.first_variant: str | None = None

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    @task
    def review(self) -> None:
        w = self.workload
        picks = [w.pick(self.user_id, self.rng) for _ in range(w.batch_size)]
        texts = [w.texts[i] for i in picks]
        self.sent += 1
        request_id = f"{self.user_id}-{self.sent}"  # Triton echoes it in the answer's id, through the router
        version = ""
        if w.versions:  # target triton: each user sticks to one version, as the router's users do to an arm
            version = w.versions[int(uuid.uuid5(uuid.NAMESPACE_OID, self.user_id)) % len(w.versions)]
        name = w.path.rsplit("/", 1)[-1]
        start = time.perf_counter()
        result, error, variant = None, None, NO_VARIANT
        try:
            result = self.client.infer(name, [text_input(self.grpc, texts)], model_version=version,
                                       outputs=self.outputs, request_id=request_id,
                                       headers={"x-user-id": self.user_id}, client_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - every failure is a failed request in Locust's statistics
            error = e
        elapsed_ms = (time.perf_counter() - start) * 1000
        if result is not None:
            variant, error = self._judge(result, len(texts), version)
        self.environment.events.request.fire(request_type=INFER, name=variant, response_time=elapsed_ms,
                                             response_length=0, context={}, exception=error)
        if (result is not None and error is None and self.http is not None and w.feedback_path
                and self.rng.random() < w.feedback_fraction):
            send_feedback(self.http, w.feedback_path, result.get_response().id or request_id,
                          [w.labels[i] for i in picks])

    def _judge(self, result, count: int, version: str) -> tuple[str, Exception | None]:
        """(variant name, None) for a valid prediction; else the problem as an exception."""
        response = result.get_response()
        if self.workload.target == "router":
            variant = response.parameters["variant"].string_param or NO_VARIANT
        else:
            variant = f"{self.workload.model} v{response.model_version or version}"
        labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy(CONTRACT.output_label).ravel()]
        payload = {"outputs": [{"name": CONTRACT.output_probabilities,
                                "data": result.as_numpy(CONTRACT.output_probabilities).ravel().tolist()},
                               {"name": CONTRACT.output_label, "data": labels}]}
        problem = check_prediction(payload, count, self.workload.label_set)
        self.first_variant = self.first_variant or variant
        if problem is None and self.first_variant != variant:
            switch = f"user {self.user_id} was served by {self.first_variant}, now by {variant}"
            self.first_variant = variant
            if self.workload.sticky_check == "fail":
                problem = f"sticky assignment broken: {switch}"
            else:
                self.environment.events.request.fire(request_type=STICKY, name=VARIANT_SWITCH, response_time=0,
                                                     response_length=0, context={}, exception=None)
        return variant, RuntimeError(problem) if problem else None

    def on_stop(self) -> None:
        self.client.close()
