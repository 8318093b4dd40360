"""The router's run-time state: the current experiment, its assigner, the recorder, the connections.

Weights change by swapping ``current`` (an immutable ``(Experiment, Assigner, period)`` triple) in one
assignment: a request reads the triple once when it starts, so in-flight requests finish with the
assignment they started with, no request ever sees a half-updated experiment, and each request's arm
and period are read together. The period is the store revision in force (with a store), or a counter in
memory that moves on every weight change (without one): the judge compares arms within each period (the
store's unit table, or the recorder's in-memory ``Judge``, which starts a period on every change).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
from dataclasses import dataclass, field

from starlette.requests import Request

from experiments.assignment import Assigner
from experiments.spec import Experiment, load_experiment
from serving.admin_token import AdminDisabled, TokenRefused, bearer_name, parse_tokens
from serving.router.config import RouterConfig
from serving.router.drift_feed import DriftFeed
from serving.router.errors import BadRequest, Forbidden, NotFound, Unauthorized
from serving.router.grpc_upstream import GrpcTarget, GrpcUpstream
from serving.router.http_upstream import Target, Upstream
from serving.router.input_keeper import InputKeeper
from serving.router.llm_upstream import LlmUpstream
from serving.router.look_feed import LookFeed
from serving.router.metrics import Recorder
from serving.router.store_runtime import StoreRuntime

log = logging.getLogger(__name__)

FIRST_PERIOD = 1
"""The period a router starts in without a store (with one: the store revision it starts at)."""


class RequestIds:
    """Ids for requests that bring none: a random prefix per router and a counter, ``9f2c...-1a``. Unique
    across replicas and restarts (64 random bits), and several times cheaper than ``uuid4().hex``."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._count):x}"


@dataclass
class RouterState:
    """Everything one router app holds; lives on ``app.state.router``."""

    config: RouterConfig
    current: tuple[Experiment, Assigner, int]
    """The experiment, its assigner and the period they belong to (see the module docstring)."""
    recorder: Recorder
    upstream: Upstream
    admin_token: dict[str, str] | None
    """Admin tokens by name (``parse_tokens``); the name stamps the audit log. None: admin API off."""
    grpc_upstream: GrpcUpstream
    """Triton over gRPC, for the router's gRPC endpoint; shares ``upstream``'s circuit breaker."""
    llm_upstream: LlmUpstream
    """Triton's ``generate_stream`` for the OpenAI door; shares ``upstream``'s circuit breaker."""
    rng: random.Random = field(default_factory=random.Random)
    request_ids: RequestIds = field(default_factory=RequestIds)
    """Ids for the requests that bring none (both front doors)."""
    shadow_tasks: set[asyncio.Task] = field(default_factory=set)
    background: set[asyncio.Task] = field(default_factory=set)
    store: StoreRuntime | None = None
    """The experiment store (``config.store``); None keeps everything in this process's memory."""
    drift: DriftFeed | None = None
    """Live traffic against each arm's training reference (``config.model_repository``); None: off."""
    looks: LookFeed | None = None
    """The judge's history of looks, for the live page (``config.look_interval_s``); None: off."""
    inputs: InputKeeper | None = None
    """Input texts kept for retraining (the experiment file's ``retain_inputs:``, with a store); None: off."""

    @classmethod
    def create(cls, config: RouterConfig, experiment: Experiment, admin_token: str | None) -> RouterState:
        """``admin_token``: the text of the token file or variable (see ``parse_tokens``)."""
        recorder = Recorder(experiment.name, config.latency_window, config.request_log_size,
                            config.feedback_pending_s)
        recorder.set_shares(experiment.shares)
        if not config.store:  # with a store the judge reads every replica's traffic from it
            recorder.start_judge(experiment.arm_names, experiment.shares, FIRST_PERIOD)
        upstream = Upstream(config.max_connections)
        tokens = parse_tokens(admin_token) if admin_token else None
        state = cls(config, (experiment, Assigner(experiment), FIRST_PERIOD), recorder, upstream, tokens,
                    GrpcUpstream(upstream.breaker), LlmUpstream(upstream.breaker, config.max_connections),
                    store=StoreRuntime(config) if config.store else None,
                    drift=DriftFeed(config.model_repository, experiment.name, recorder.registry,
                                    config.drift_sample_rate, config.drift_window) if config.model_repository else None)
        if config.look_interval_s > 0:
            state.looks = LookFeed(state, config.look_interval_s, config.look_ring)
        return state

    @property
    def experiment(self) -> Experiment:
        return self.current[0]

    @property
    def period(self) -> int:
        return self.current[2]

    def set_experiment(self, experiment: Experiment, why: str, period: int | None = None) -> None:
        """Run ``experiment`` from now on, in ``period`` (a store revision); without one the period moves on
        when the weights change and stays when they do not."""
        old, _, old_period = self.current
        if experiment.name != old.name:
            raise BadRequest(f"the new spec names experiment {experiment.name!r} but this router runs {old.name!r}; "
                             "start a new router for a new experiment")
        if experiment.arm_names != old.arm_names:
            log.warning("arms changed %s -> %s: keys are re-bucketed", old.arm_names, experiment.arm_names)
        if period is None:
            period = old_period + 1 if experiment.shares != old.shares else old_period
        self.current = (experiment, Assigner(experiment), period)
        self.recorder.set_shares(experiment.shares)
        self.recorder.experiment_changed(experiment.arm_names, experiment.shares, period)
        log.info("experiment %s updated (%s): shares %s, period %d", experiment.name, why,
                 {k: round(v, 4) for k, v in experiment.shares.items()}, period)

    async def reload(self, why: str, who: str = "router") -> Experiment:
        """Re-read the experiment file; a broken file raises and leaves the running experiment as it was.
        With a store the file becomes the next revision, which every replica applies."""
        exp = await asyncio.to_thread(load_experiment, self.config.experiment, self.config.triton_url,
                                      self.config.triton_grpc_url)
        if self.store is not None:
            await self.store.change(exp, "file", who, f"reload ({why})")
        else:
            self.set_experiment(exp, why)
        return exp

    @staticmethod
    def target(exp: Experiment, arm_name: str) -> Target:
        """Where ``arm_name`` (an arm or the shadow) of ``exp`` is served."""
        arm = exp.shadow if exp.shadow and arm_name == exp.shadow.name else exp.arm(arm_name)
        return Target(exp.upstream_of(arm), arm.model, arm.version)

    @staticmethod
    def grpc_target(exp: Experiment, arm_name: str) -> GrpcTarget:
        """Where ``arm_name`` (an arm or the shadow) of ``exp`` is served over gRPC."""
        arm = exp.shadow if exp.shadow and arm_name == exp.shadow.name else exp.arm(arm_name)
        return GrpcTarget(exp.grpc_upstream_of(arm), RouterState.target(exp, arm_name))

    def check_experiment(self, name: str) -> Experiment:
        exp = self.experiment
        if name != exp.name:
            raise NotFound(f"unknown experiment {name!r}; this router serves {exp.name!r}")
        return exp

    def require_admin(self, request: Request) -> str:
        """The name of the admin token the request carries (``Authorization: Bearer <token>``), or raise
        ``Unauthorized`` (401) or ``Forbidden`` (403: the router has no token)."""
        try:
            return bearer_name(self.admin_token, request.headers.get("authorization", ""))
        except AdminDisabled as e:
            raise Forbidden(str(e)) from None
        except TokenRefused as e:
            raise Unauthorized(str(e)) from None


def get_state(request: Request) -> RouterState:
    return request.app.state.router
