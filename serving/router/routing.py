"""The routing core: one inference request through the experiment, whatever front door it came in by.

A front door turns its wire format into an ``Exchange`` (HTTP: ``serving.router.http_door``; gRPC:
``serving.router.grpc_door``) and drives it through two calls:

``answer = await route(state, exchange)``
    checks the experiment name, lets the door read what the caller sent (``Exchange.read``), checks the
    request id, takes the sticky key (``Sticky.key_of`` over the door's headers and the request's
    parameters), assigns an arm, lets the door check the request against that arm's model
    (``Exchange.check``), then sends it (``Exchange.send``) to the arm, or to the experiment's fallback
    arm when the arm's upstream fails (``with_fallback``). It returns the upstream's answer, with the arm
    that served it, the key and the period on the exchange; or it raises ``Refused``: the classified
    ``RouterError`` (a 4xx is the caller's, 503 an upstream down, 504 a timeout), already recorded
    (``record_refused``).

``finish(state, exchange, answer, latency_s)``
    once the door has delivered the answer: records it (with what ``Exchange.outcome`` reads from it),
    offers the request to the drift monitor (its texts decoded by ``Exchange.texts`` only if sampled) and
    maybe copies it to the shadow (``Exchange.shadow``). Never raises.

A streaming door fits the same shape: its ``send`` returns once the upstream's stream has started (so a
failure before the first chunk still falls back), it relays the chunks itself, and calls ``finish`` when
the stream ends.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from serving.router.errors import BadRequest, RouterError, UpstreamError
from serving.router.metrics import RequestRef

if TYPE_CHECKING:
    from experiments.generation import GenerationSample
    from experiments.spec import Experiment
    from serving.router.state import RouterState

log = logging.getLogger(__name__)

A = TypeVar("A")
MAX_REQUEST_ID = 256
"""The longest request id a caller may send (it travels back in the ``x-request-id`` header or metadata)."""
UNASSIGNED = "unassigned"
"""The arm label of requests refused before an arm was chosen."""


class Refused(Exception):
    """A request the router answers with an error: the ``RouterError``, the arm (if one was assigned) and the
    request id to send back."""

    def __init__(self, error: RouterError, arm: str | None, request_id: str):
        super().__init__(str(error))
        self.error, self.arm, self.request_id = error, arm, request_id


class Exchange(abc.ABC, Generic[A]):
    """One request at a front door, as the routing core drives it; ``A`` is the upstream's answer type.

    The door sets ``experiment`` (the name the caller addressed), ``request_id`` (the caller's, or None),
    ``arm`` and ``key`` (None) when it builds the exchange, and ``parameters`` in ``read``; ``route`` fills in
    the rest as it decides it: the router ``state``, the experiment ``exp`` and ``period`` in force, the
    sticky ``key``, the assigned ``arm`` and the arm that ``served`` it."""

    __slots__ = ("experiment", "request_id", "parameters", "state", "start", "exp", "period", "key", "arm", "served")
    id_field = "the request id"
    """How the request id is named in the error for one that is too long."""
    parameters: Mapping[str, Any]
    """The request's parameters (set by ``read``)."""

    @abc.abstractmethod
    async def read(self) -> None:
        """Read and parse what the caller sent and set ``parameters``; raise ``BadRequest``/``PayloadTooLarge``
        for what is wrong with it. May set ``request_id`` from the payload."""

    @abc.abstractmethod
    def header(self, name: str) -> str | None:
        """The request header (HTTP) or metadata entry (gRPC) ``name`` (lower case), or None."""

    @abc.abstractmethod
    async def check(self, arm: str) -> None:
        """Check the request against ``arm``'s model metadata; ``BadRequest`` says what does not fit."""

    @abc.abstractmethod
    def send(self, arm: str) -> Awaitable[A]:
        """Send the request to ``arm`` (an arm of ``exp``); the answer, or ``UpstreamError``/``UpstreamTimeout``
        (the arm's failure) or ``UpstreamRejected`` (the request's)."""

    @abc.abstractmethod
    def outcome(self, answer: A) -> tuple[tuple[str, ...], Sequence[float]]:
        """What the delivered answer says: the predicted labels and each prediction's top-class probability."""

    @abc.abstractmethod
    def texts(self) -> list[str]:
        """The request's input texts, for the drift monitor (called in its worker, for sampled requests only)."""

    @abc.abstractmethod
    async def shadow(self) -> tuple[str, ...]:
        """Send a copy of the request to ``exp``'s shadow; the labels it predicted."""

    def default_key(self) -> str | None:
        """The sticky key when the experiment's own source (header or parameter) gives none: the OpenAI door's
        ``user`` field; None (the default): the request is assigned on its own."""
        return None

    def generation(self, answer: A) -> tuple[GenerationSample, str] | None:
        """A generative answer's stream figures and its text (kept for feedback that scores it); None (the
        default): a classifier's answer."""
        return None


async def route(state: RouterState, ex: Exchange[A]) -> A:
    """Assign, check and send one request (see the module docstring); the upstream's answer, or ``Refused``."""
    ex.start = time.perf_counter()
    exp, assigner, period = state.current  # one read: a weight change mid-request does not affect this request
    ex.state, ex.exp, ex.period = state, exp, period
    inflight = state.recorder.inflight
    inflight.inc()
    try:
        state.check_experiment(ex.experiment)
        await ex.read()
        if ex.request_id is not None and len(ex.request_id) > MAX_REQUEST_ID:
            raise BadRequest(f"{ex.id_field} is {len(ex.request_id)} characters; at most {MAX_REQUEST_ID} allowed")
        key = ex.key = exp.sticky.key_of(ex.header, ex.parameters) or (exp.sticky.source and ex.default_key()) or None
        if key is None and exp.sticky.source:
            state.recorder.unkeyed()
        arm = ex.arm = assigner.assign(key, state.rng)
        await ex.check(arm)
        answer, ex.served = await with_fallback(state, exp, arm, ex.send)
    except RouterError as e:
        request_id = ex.request_id = ex.request_id or state.request_ids.new()
        record_refused(state, e, ex.arm, ex.key, request_id, period)
        raise Refused(e, ex.arm, request_id) from None
    finally:
        inflight.dec()
    ex.request_id = ex.request_id or state.request_ids.new()
    return answer


async def with_fallback(state: RouterState, exp: Experiment, arm: str,
                        send: Callable[[str], Awaitable[A]]) -> tuple[A, str]:
    """``send(arm)``; on an upstream failure try the fallback arm. Returns (answer, arm served).

    A failure the fallback follows is counted here, against its arm; the failure the caller gets is raised
    with ``UpstreamError.arm`` naming the arm it happened on, for ``record_refused`` to record once, with the
    request it ends. The upstreams' circuit breaker (``serving.router.breaker``) makes an arm that keeps
    failing fail fast."""
    try:
        return await send(arm), arm
    except UpstreamError as e:
        if exp.fallback is None or exp.fallback == arm:
            e.arm = arm
            raise
        state.recorder.error(arm, e.status_code)
        first = e
    state.recorder.fallback(arm, exp.fallback)
    log.warning("arm %s failed (%s); serving from fallback %s", arm, first, exp.fallback)
    try:
        return await send(exp.fallback), exp.fallback
    except UpstreamError as e:
        both = type(e)(f"arm {arm!r} failed ({first}) and fallback {exp.fallback!r} failed too ({e})")
        both.arm = exp.fallback
        raise both from None


def record_refused(state: RouterState, e: RouterError, arm: str | None, key: str | None, request_id: str,
                   period: int) -> None:
    """Record a request answered with ``e``. A 4xx is the caller's mistake: recorded apart, never against an
    arm. A 5xx counts once, against the arm it happened on (``UpstreamError.arm``, else the assigned arm), as
    the final outcome of the request: with its unit and period once it had an arm."""
    if e.status_code < 500:
        state.recorder.client_error(arm or UNASSIGNED, e.status_code)
        return
    failed = (e.arm if isinstance(e, UpstreamError) else None) or arm or UNASSIGNED
    state.recorder.error(failed, e.status_code, RequestRef(request_id, key, arm, period) if arm else None)


def finish(state: RouterState, ex: Exchange[A], answer: A, latency_s: float) -> None:
    """Once the answer is delivered: record the request (its assigned arm, period and what the answer
    predicted, or a generative answer's stream figures), offer a classifier's request to the drift monitor's
    sample, then maybe start its shadow copy. Never raises: the answer is out, a failure here is logged."""
    try:
        labels, confidences = ex.outcome(answer)
        generation = ex.generation(answer)
        state.recorder.served(ex.request_id, ex.served, latency_s, labels, key=ex.key, assigned=ex.arm,
                              confidences=confidences, period=ex.period, generation=generation)
        if generation is not None:  # drift and shadows watch classifiers' predictions
            return
        exp = ex.exp
        if state.drift is not None:  # the texts are decoded in the drift worker, only if this request is sampled
            state.drift.offer(exp, ex.served, ex.texts, labels, confidences)
        if exp.shadow is not None and state.rng.random() < exp.shadow.fraction:
            spawn_shadow(state, ex, labels)
    except Exception:
        log.exception("recording request %s failed", ex.request_id)


def spawn_shadow(state: RouterState, ex: Exchange, primary_labels: tuple[str, ...]) -> None:
    """Start the shadow copy as its own task, or drop it (counted) when too many are in flight."""
    shadow = ex.exp.shadow
    assert shadow is not None
    if len(state.shadow_tasks) >= state.config.max_shadow_in_flight:
        state.recorder.shadow_dropped(shadow.name, ex.served)
        return
    task = asyncio.get_running_loop().create_task(run_shadow(state, ex, primary_labels))
    state.shadow_tasks.add(task)
    task.add_done_callback(state.shadow_tasks.discard)


async def run_shadow(state: RouterState, ex: Exchange, primary_labels: tuple[str, ...]) -> None:
    """Send the copy to the shadow and record its latency and agreement; never raises."""
    exp = ex.exp
    assert exp.shadow is not None
    start = time.perf_counter()
    try:
        labels = await ex.shadow()
    except Exception as e:  # the shadow's failures are recorded, never raised
        log.debug("shadow %s failed: %s", exp.shadow.name, e)
        state.recorder.shadow_result(exp.shadow.name, ex.served, None, primary_labels, None)
        return
    state.recorder.shadow_result(exp.shadow.name, ex.served, time.perf_counter() - start, primary_labels, labels)
