"""The reviews workload's user logic (no Locust import): what the classifier's users send and what counts as an answer.

``Workload`` (the held-out reviews and the options every user of a Locust process shares), ``Reviews`` (which
reviews a user sends, the Triton version it sticks to, the checks of an answer, the sticky accounting, the
feedback) and ``Reply`` (what a transport got back). The locustfile's transports and user classes run it.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtests.payloads import check_prediction
from loadtests.users import StickyAccount, text_order, window_pick

INFER = "infer"
"""The request type of a prediction in Locust's statistics (one row per variant)."""
FEEDBACK = "feedback"
"""The request type and row of the feedback posts."""


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


@dataclass(frozen=True)
class Reply:
    """What a transport got back for one inference request, in the form the checks read."""

    payload: dict | None
    """The answer as KServe v2 JSON (``{"outputs": [...], "model_version": ...}``); None when it failed."""
    problem: str | None = None
    """Why there is no answer (HTTP status, transport error, not JSON); None when there is one."""
    router_variant: str | None = None
    """The arm the router names (``X-Variant``, ``parameters.variant``), if any."""
    request_id: str | None = None
    """The request id to send feedback for."""


class Reviews:
    """The one user logic, whatever the transport: which reviews to send, the Triton version a user sticks to,
    whether an answer is a valid prediction from the variant a user had before, and when to send feedback."""

    def __init__(self, environment) -> None:
        self.environment = environment
        self.workload = workload_of(environment)
        self.rng = random.Random()
        self.sticky = StickyAccount(environment.events, self.workload.sticky_check)

    def pick(self, user: str) -> list[int]:
        """The rows of the held-out texts one request of ``user`` sends (from its own window with ``--user-texts window``)."""
        w = self.workload
        return [w.pick(user, self.rng) for _ in range(w.batch_size)]

    def version_of(self, user: str) -> str:
        """Target triton: the version ``user`` sticks to, as the router's users stick to an arm; "" otherwise."""
        versions = self.workload.versions
        return versions[int(uuid.uuid5(uuid.NAMESPACE_OID, user)) % len(versions)] if versions else ""

    def variant(self, reply: Reply, version: str) -> str | None:
        """The statistics row of an answer: the router's arm, or ``MODEL vVERSION`` on Triton."""
        if self.workload.target == "router":
            params = (reply.payload or {}).get("parameters") or {}
            return reply.router_variant or params.get("variant")
        served = (reply.payload or {}).get("model_version") or version
        return f"{self.workload.model} v{served}" if served else None

    def judge(self, user: str, reply: Reply, variant: str | None, count: int) -> str | None:
        """None for a valid prediction of ``count`` texts, else what is wrong; a user served by another variant
        than before is counted (``sticky`` / ``variant switch``) or, with ``--sticky-check fail``, a failure."""
        if reply.payload is None:
            return reply.problem
        if variant is None:
            return "answer names no variant (no X-Variant header, parameters.variant or model_version)"
        problem = check_prediction(reply.payload, count, self.workload.label_set)
        return self.sticky.check(user, variant, valid=problem is None) or problem

    def predict(self, user: str, transport, feedback_client) -> None:
        """One inference request for ``user`` over ``transport``, reported under the name of the variant that
        served it; then, for a share of the valid answers, its true labels to the router (``feedback_client``:
        an HTTP client of the router, or None)."""
        w = self.workload
        picks = self.pick(user)
        version = self.version_of(user)

        def judge(reply: Reply) -> tuple[str | None, str | None]:
            variant = self.variant(reply, version)
            return variant, self.judge(user, reply, variant, len(picks))

        request_id = transport.infer(user, [w.texts[i] for i in picks], version, judge)
        if request_id and feedback_client is not None and w.feedback_path and self.rng.random() < w.feedback_fraction:
            send_feedback(feedback_client, w.feedback_path, request_id, [w.labels[i] for i in picks])


Judge = Callable[[Reply], tuple[str | None, str | None]]
"""``Reviews.predict``'s check of a reply: (the variant's row name, the problem or None)."""


def send_feedback(client, path: str, request_id: str, labels: list[str]) -> None:
    """Tell the router the true label(s) of an answered request: its report gains accuracy per arm. 202: a
    replica whose store does not hold the answer yet keeps the feedback until it arrives."""
    with client.post(path, json={"id": request_id, "labels": labels}, name=FEEDBACK, catch_response=True) as r:
        r.request_meta["request_type"] = FEEDBACK
        if r.status_code not in (200, 202):
            r.failure(f"feedback refused: HTTP {r.status_code}: {(r.text or '')[:200]}")
