"""Locust users for the served models: real held-out reviews (the classifier) or held-out chat prompts streamed
as OpenAI chat completions (the causal LM, ``--workload chat``), one statistics row per variant.

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

One user logic per workload (``loadtests.reviews.Reviews``: the texts, the version a user sticks to on Triton,
the checks of an answer, the sticky accounting and the feedback; ``loadtests.chat_users.Chats`` for the chat
workload) over its transports (``HttpTransport``, ``GrpcTransport``; ``ChatTransport``), in user classes picked
by name on Locust's command line (``loadtests.run`` does it for you):

- ``ClosedLoopUser``: N users, each sends, waits for the answer (and ``--think-time``), sends again.
- ``OpenLoopUser``: arrival generators; together they send ``--arrival-rate`` requests per second with
  Poisson (exponential) inter-arrival times, whether or not earlier answers came back.
- ``GrpcUser``: ``ClosedLoopUser`` over gRPC (``tritonclient.grpc``), to the router's ``--grpc-port`` or,
  with ``--target triton``, to Triton's gRPC port: ``--grpc-host 127.0.0.1:8081`` (or ``--host
  grpc://127.0.0.1:8081``). Its feedback goes to the router's HTTP ``--host``, with the request id the
  gRPC answer carries (``loadtests.run`` picks it with ``--protocol grpc``).
- ``ChatUser`` / ``ChatOpenLoopUser``: ``ClosedLoopUser`` / ``OpenLoopUser`` streaming chat completions to the
  router's OpenAI door or any OpenAI-compatible server, each timed with vLLM's definitions (``loadtests.chat``).

    locust -f loadtests/locustfile.py --headless -u 10 -t 30s --host http://127.0.0.1:8080 ClosedLoopUser
"""

from __future__ import annotations

import time

import gevent
import locust.stats
from gevent.pool import Pool
from locust import FastHttpUser, User, events, task
from locust.runners import WorkerRunner

from export.contract import CONTRACT
from loadtests import chat, measure
from loadtests.chat import CHAT
from loadtests.chat_users import Chats, ChatTransport
from loadtests.config import add_locust_arguments
from loadtests.payloads import infer_body
from loadtests.reviews import INFER, Judge, Reply, Reviews, Workload, workload_of
from loadtests.users import NO_VARIANT, zipf_weights
from serving.client import text_input


@events.init_command_line_parser.add_listener
def _register_options(parser, **_kwargs) -> None:
    add_locust_arguments(parser)


@events.init.add_listener
def _fresh_clock(environment, **_kwargs) -> None:
    """gevent's timers count from the event loop's cached clock, which stands still until the loop first runs:
    it did not while this file and its imports loaded (seconds on a busy machine). Locust sets ``--run-time``
    right after ``init``; refreshed here, the run lasts its time instead of ending before any request."""
    gevent.get_hub().loop.update_now()


measure.LatencyLog.register(events)  # every inference request's exact time -> PREFIX_latency-PID.csv (loadtests.measure)
chat.StreamLog.register(events)  # every streamed completion's chunk times -> PREFIX_streams-PID.jsonl (loadtests.chat)


@events.test_stop.add_listener
def _let_csv_catch_up(environment, **_kwargs) -> None:
    """Locust writes its CSV every CSV_STATS_INTERVAL_SEC and not again at exit, so the last second of a
    run would be missing from ``_stats.csv``; waiting here (after the users stopped, before the process
    exits) lets the writer record the final totals, including the workers' last reports."""
    if not isinstance(environment.runner, WorkerRunner):
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.5)


def user_id(environment, prefix: str) -> str:
    """Stable and reproducible: the n-th user of Locust process k is ``PREFIX-k-n`` in every run."""
    count = environment.tunestack_users = getattr(environment, "tunestack_users", 0) + 1
    return f"{prefix}-{max(getattr(environment.runner, 'worker_index', 0), 0)}-{count}"


class HttpTransport:
    """KServe v2 JSON over Locust's ``FastHttpUser`` client, to the router or to Triton."""

    def __init__(self, client, workload: Workload) -> None:
        self.client, self.workload = client, workload

    def infer(self, user: str, texts: list[str], version: str, judge: Judge) -> str | None:
        """Send ``texts``; the request id of a valid answer (for feedback), else None."""
        path = self.workload.path + (f"/versions/{version}" if version else "")
        with self.client.post(f"{path}/infer", json=infer_body(texts), headers={"X-User-Id": user}, name=NO_VARIANT,
                              catch_response=True) as response:
            response.request_meta["request_type"] = INFER
            reply = self._reply(response)
            variant, problem = judge(reply)
            response.request_meta["name"] = variant or NO_VARIANT
            if problem:
                response.failure(problem)
                return None
            response.success()
            return reply.request_id

    @staticmethod
    def _reply(response) -> Reply:
        headers = response.headers or {}
        if response.status_code != 200:
            detail = (response.text or "")[:200] if response.status_code else repr(response.error)
            return Reply(None, f"HTTP {response.status_code}: {detail}", headers.get("X-Variant"))
        try:
            payload = response.json()
        except (ValueError, TypeError) as e:
            return Reply(None, f"answer is not JSON: {e}")
        return Reply(payload, None, headers.get("X-Variant"), headers.get("X-Request-Id"))


class ClosedLoopUser(FastHttpUser):
    """A user with a stable id: send a review, wait for the answer and ``--think-time`` seconds, repeat."""

    def __init__(self, environment) -> None:
        self.network_timeout = self.connection_timeout = environment.parsed_options.request_timeout
        super().__init__(environment)
        self.logic, self.transport = self.user_logic(environment)
        self.user_id = user_id(environment, "user")

    def user_logic(self, environment):
        """What this user sends and over what: (the user logic, its transport)."""
        reviews = Reviews(environment)
        return reviews, HttpTransport(self.client, reviews.workload)

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    @task
    def review(self) -> None:
        self.logic.predict(self.user_id, self.transport, self.client)

    def on_stop(self) -> None:
        getattr(self.transport, "close", lambda: None)()


class OpenLoopUser(FastHttpUser):
    """An arrival generator: Poisson arrivals at ``--arrival-rate / --users`` per second, not waiting for answers.

    Each arrival is a visitor drawn from ``--user-population`` stable ids (alike, or by ``--user-activity``'s
    Zipf weights), sent from its own greenlet.
    When ``--max-in-flight`` requests of this process are already waiting, the arrival is dropped and
    counted as a failure named ``(dropped)``: the client, not the server, is then the limit.
    """

    dropped_type = INFER
    """The request type of a dropped arrival's row: the workload's."""

    def __init__(self, environment) -> None:
        opts = environment.parsed_options
        self.network_timeout = self.connection_timeout = opts.request_timeout
        self.concurrency = opts.max_in_flight  # connection pool of this user's client
        super().__init__(environment)
        self.logic, self.transport = self.user_logic(environment)
        self.pool = Pool(opts.max_in_flight)
        self.rate = opts.arrival_rate / max(1, opts.num_users or 1)
        self.population = opts.user_population
        self.activity = zipf_weights(opts.user_population, opts.user_activity) if opts.user_activity > 0 else None
        """Cumulative weights of the user ids (Zipf), or None: every id alike."""
        if self.rate <= 0:
            raise ValueError("OpenLoopUser needs --arrival-rate > 0 (requests per second)")

    user_logic = ClosedLoopUser.user_logic

    def on_start(self) -> None:
        self.next_arrival = time.perf_counter()

    def wait_time(self) -> float:
        """Time until the next arrival: exponential gaps on a fixed schedule, so a slow answer delays nothing.

        Waiting here rather than inside the task lets Locust stop or remove this user between arrivals."""
        self.next_arrival += self.logic.rng.expovariate(self.rate)
        return max(0.0, self.next_arrival - time.perf_counter())

    @task
    def arrival(self) -> None:
        if self.pool.full():
            self.environment.events.request.fire(
                request_type=self.dropped_type, name="(dropped)", response_time=0, response_length=0, context={},
                exception=RuntimeError(f"client limit: {self.pool.size} requests already in flight"))
            return
        if self.activity is None:
            k = self.logic.rng.randrange(self.population)
        else:
            k = self.logic.rng.choices(range(self.population), cum_weights=self.activity)[0]
        self.pool.spawn(self.logic.predict, f"visitor-{k}", self.transport, self.client)

    def on_stop(self) -> None:
        self.pool.kill(block=False)
        getattr(self.transport, "close", lambda: None)()


def chat_logic(user, environment) -> tuple[Chats, ChatTransport]:
    """The chat workload's logic and transport for ``user`` (one HTTP connection per request it may have open)."""
    opts = environment.parsed_options
    connections = opts.max_in_flight if isinstance(user, OpenLoopUser) else 1
    return Chats(environment), ChatTransport(user.host, opts.request_timeout, connections)


class ChatUser(ClosedLoopUser):
    """``ClosedLoopUser`` streaming chat completions (``--workload chat``): one at a time, then ``--think-time``."""

    user_logic = chat_logic


class ChatOpenLoopUser(OpenLoopUser):
    """``OpenLoopUser`` streaming chat completions (``--workload chat``): Poisson arrivals, each a completion."""

    user_logic = chat_logic
    dropped_type = CHAT


def _grpc_client_module():
    """``tritonclient.grpc``, with gRPC switched to gevent first: without it every Locust user of the process
    shares one blocked thread and the run serialises (or hangs at the end)."""
    import grpc.experimental.gevent

    grpc.experimental.gevent.init_gevent()
    import tritonclient.grpc

    return tritonclient.grpc


class GrpcTransport:
    """KServe v2 over ``tritonclient.grpc`` (to the router's gRPC endpoint or to Triton's), each request fired
    as a Locust request event; the answer is read into the JSON form the checks read."""

    def __init__(self, environment, address: str, user: str) -> None:
        self.grpc = _grpc_client_module()
        self.environment, self.workload = environment, workload_of(environment)
        self.timeout = environment.parsed_options.request_timeout
        self.client = self.grpc.InferenceServerClient(address)
        self.outputs = [self.grpc.InferRequestedOutput(n) for n in (CONTRACT.output_probabilities, CONTRACT.output_label)]
        self.prefix, self.sent = user, 0

    def infer(self, user: str, texts: list[str], version: str, judge: Judge) -> str | None:
        """Send ``texts``; the request id of a valid answer (for feedback), else None."""
        self.sent += 1
        request_id = f"{self.prefix}-{self.sent}"  # Triton echoes it in the answer's id, through the router
        start = time.perf_counter()
        try:
            result = self.client.infer(self.workload.path.rsplit("/", 1)[-1], [text_input(self.grpc, texts)],
                                       model_version=version, outputs=self.outputs, request_id=request_id,
                                       headers={"x-user-id": user}, client_timeout=self.timeout)
            reply = self._reply(result, request_id)
            error = None
        except Exception as e:  # noqa: BLE001 - every failure is a failed request in Locust's statistics
            reply, error = Reply(None, f"{type(e).__name__}: {e}"), e
        elapsed_ms = (time.perf_counter() - start) * 1000
        variant, problem = judge(reply)
        self.environment.events.request.fire(request_type=INFER, name=variant or NO_VARIANT, response_time=elapsed_ms,
                                             response_length=0, context={},
                                             exception=error or (RuntimeError(problem) if problem else None))
        return None if problem else reply.request_id

    def _reply(self, result, request_id: str) -> Reply:
        response = result.get_response()
        labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy(CONTRACT.output_label).ravel()]
        payload = {"model_version": response.model_version, "outputs": [
            {"name": CONTRACT.output_probabilities, "data": result.as_numpy(CONTRACT.output_probabilities).ravel().tolist()},
            {"name": CONTRACT.output_label, "data": labels}]}
        return Reply(payload, None, response.parameters["variant"].string_param or None, response.id or request_id)

    def close(self) -> None:
        self.client.close()


class GrpcUser(User):
    """``ClosedLoopUser`` over gRPC: the same reviews, checks and per-variant rows. The address is
    ``--grpc-host HOST:PORT``, else ``--host grpc://HOST:PORT``; feedback (target router, ``--feedback-fraction``)
    goes over HTTP to ``--host`` when that is the router's ``http://`` URL."""

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.logic = Reviews(environment)
        self.user_id = user_id(environment, "grpc-user")
        address = getattr(environment.parsed_options, "grpc_host", "") or (self.host or "").split("://", 1)[-1].rstrip("/")
        self.transport = GrpcTransport(environment, address, self.user_id)
        self.http = None  # the router's HTTP endpoint, for feedback
        if self.logic.workload.feedback_fraction > 0 and (self.host or "").startswith(("http://", "https://")):
            from locust.contrib.fasthttp import FastHttpSession

            self.http = FastHttpSession(self.host, environment.events.request, self)

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    @task
    def review(self) -> None:
        self.logic.predict(self.user_id, self.transport, self.http)

    def on_stop(self) -> None:
        self.transport.close()
