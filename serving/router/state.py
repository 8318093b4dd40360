"""The router's run-time state: the current experiment, its assigner, the recorder, the connections.

Weights change by swapping ``current`` (an immutable ``(Experiment, Assigner)`` pair) in one
assignment: a request reads the pair once when it starts, so in-flight requests finish with the
assignment they started with and no request ever sees a half-updated experiment.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
from dataclasses import dataclass, field

from starlette.requests import Request

from serving.router.assignment import Assigner
from serving.router.config import Experiment, RouterConfig, load_experiment
from serving.router.errors import BadRequest, Forbidden, NotFound, Unauthorized
from serving.router.grpc_upstream import GrpcTarget, GrpcUpstream
from serving.router.metrics import Recorder
from serving.router.upstream import Target, Upstream

log = logging.getLogger(__name__)

TOKEN_ENV = "TUNESTACK_ROUTER_ADMIN_TOKEN"


@dataclass
class RouterState:
    """Everything one router app holds; lives on ``app.state.router``."""

    config: RouterConfig
    current: tuple[Experiment, Assigner]
    recorder: Recorder
    upstream: Upstream
    admin_token: str | None
    grpc_upstream: GrpcUpstream
    """Triton over gRPC, for the router's gRPC endpoint; shares ``upstream``'s circuit breaker."""
    rng: random.Random = field(default_factory=random.Random)
    shadow_tasks: set[asyncio.Task] = field(default_factory=set)
    background: set[asyncio.Task] = field(default_factory=set)

    @classmethod
    def create(cls, config: RouterConfig, experiment: Experiment, admin_token: str | None) -> RouterState:
        recorder = Recorder(experiment.name, config.latency_window, config.request_log_size)
        recorder.set_shares(experiment.shares)
        upstream = Upstream(config.max_connections)
        return cls(config, (experiment, Assigner(experiment)), recorder, upstream, admin_token, GrpcUpstream(upstream))

    @property
    def experiment(self) -> Experiment:
        return self.current[0]

    def set_experiment(self, experiment: Experiment, why: str) -> None:
        old = self.experiment
        if experiment.name != old.name:
            raise BadRequest(f"the new spec names experiment {experiment.name!r} but this router runs {old.name!r}; "
                             "start a new router for a new experiment")
        if experiment.arm_names != old.arm_names:
            log.warning("arms changed %s -> %s: keys are re-bucketed", old.arm_names, experiment.arm_names)
        self.current = (experiment, Assigner(experiment))
        self.recorder.set_shares(experiment.shares)
        log.info("experiment %s updated (%s): shares %s", experiment.name, why,
                 {k: round(v, 4) for k, v in experiment.shares.items()})

    async def reload(self, why: str) -> Experiment:
        """Re-read the experiment file; a broken file raises and leaves the running experiment as it was."""
        exp = await asyncio.to_thread(load_experiment, self.config.experiment, self.config.triton_url,
                                      self.config.triton_grpc_url)
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

    def require_admin(self, request: Request) -> None:
        """Raise unless the request carries ``Authorization: Bearer <the admin token>``."""
        if self.admin_token is None:
            raise Forbidden(f"the admin API is disabled: start the router with --admin-token-file or ${TOKEN_ENV}")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing admin token: send the header 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(token.strip().encode(), self.admin_token.encode()):
            raise Unauthorized("wrong admin token")


def get_state(request: Request) -> RouterState:
    return request.app.state.router
