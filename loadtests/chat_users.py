"""The chat workload's user logic and transport, for the locustfile's ``ChatUser`` and ``ChatOpenLoopUser``.

``Chats`` is to a streamed chat completion what ``Reviews`` is to a KServe v2 prediction: which held-out prompt
a user sends (``--texts``, the causal task's held-out prompts), the request body (``model``: the experiment on
the router, ``--model`` on another OpenAI-compatible server; ``max_tokens``, ``temperature``, ``ignore_eos``
from the options; the user id in OpenAI's ``user`` field and in ``X-User-Id``), the arm's row and the sticky
accounting. ``ChatTransport`` streams it over one ``httpx`` client (cooperative under Locust's gevent). Each
completion is one Locust request event: type ``chat``, named by the arm (``X-Variant``; ``--model`` on target
openai), ``response_time`` the end-to-end latency in ms, ``response_length`` the output tokens, and the
``loadtests.chat.Completion`` in its context (``loadtests.chat.StreamLog`` writes it down for the report).
"""

from __future__ import annotations

import random
import time

import httpx

from loadtests.chat import CHAT, Completion, read_chat_prompts, stream_completion
from loadtests.users import NO_VARIANT, StickyAccount
from serving.openai_stream import chat_request


def prompts_of(environment) -> tuple[tuple[dict, ...], ...]:
    """The process's prompts, read once and kept on the Locust environment its users share."""
    prompts = getattr(environment, "tunestack_prompts", None)
    if prompts is None:
        prompts = environment.tunestack_prompts = read_chat_prompts(environment.parsed_options.texts)
    return prompts


class ChatTransport:
    """OpenAI chat completions streamed over one ``httpx`` client to ``host`` (``connections`` at most)."""

    def __init__(self, host: str, timeout: float, connections: int = 1) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.Client(base_url=host, timeout=timeout, limits=limits, trust_env=False)

    def stream(self, body: dict, headers: dict[str, str]) -> Completion:
        return stream_completion(self.client, body, headers)

    def close(self) -> None:
        self.client.close()


class Chats:
    """The chat user logic, whatever the loop (see the module docstring)."""

    def __init__(self, environment) -> None:
        opts = environment.parsed_options
        self.environment, self.prompts, self.rng = environment, prompts_of(environment), random.Random()
        self.router = opts.target == "router"
        self.model = opts.experiment if self.router else opts.model
        self.sampling = {"max_tokens": opts.max_tokens, "temperature": opts.temperature}
        if opts.ignore_eos:
            self.sampling["ignore_eos"] = True
        self.sticky = StickyAccount(environment.events, opts.sticky_check)

    def body(self, user: str) -> dict:
        """A streaming chat request for one held-out prompt, drawn at random, from ``user``."""
        messages = self.prompts[self.rng.randrange(len(self.prompts))]
        return chat_request(self.model, messages, user=user, **self.sampling)

    def judge(self, user: str, completion: Completion) -> tuple[str, str | None]:
        """The row name of a completion and its problem (None: a success)."""
        variant = completion.variant or (None if self.router else self.model)
        if variant is None:
            return NO_VARIANT, completion.problem or "answer names no variant (no X-Variant header, no tunestack.arm field)"
        return variant, self.sticky.check(user, variant, valid=completion.problem is None) or completion.problem

    def predict(self, user: str, transport: ChatTransport, _feedback_client=None) -> None:
        """Stream one completion for ``user`` and report it as one request event (see the module docstring)."""
        completion = transport.stream(self.body(user), {"X-User-Id": user})
        name, problem = self.judge(user, completion)
        record = completion.record
        ms = (record.e2e_s if record else time.time() - completion.started_at) * 1000
        self.environment.events.request.fire(
            request_type=CHAT, name=name, response_time=ms, response_length=record.output_tokens if record else 0,
            context={"completion": completion}, exception=RuntimeError(problem) if problem else None)
