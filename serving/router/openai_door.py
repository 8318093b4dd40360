"""The router's OpenAI-compatible door: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

A third front door over the routing core (``serving.router.routing``), beside KServe v2 over HTTP and gRPC. The
experiment is the ``model``; the sticky key is the experiment's sticky header, else the request's ``user``
field, else none (the request is a unit of its own). The core assigns an arm, and ``GenerationExchange.send``
opens the arm's Triton ``generate_stream`` (``llm_upstream.py``) and returns once the first token is in, so an
arm that fails before it falls back as the classifier path does. The door then relays the tokens:

- ``stream: true``: server-sent events in OpenAI's chunk format (``serving.openai_wire``): the role (chat), a chunk
  per piece of text, a chunk with the ``finish_reason``, with ``stream_options.include_usage`` a last chunk
  with ``usage`` and no choices, then ``data: [DONE]``;
- else one ``chat.completion`` / ``text_completion`` with ``usage``.

**The arm** is named in the ``X-Variant`` header (as on the infer path) and in the body: every completion
object and chunk carries ``"tunestack": {"arm": ARM, "version": VERSION, "request_id": ID}`` (the version is the
arm's Triton model version; ``""``: Triton's default). ``X-Request-Id`` is the id feedback names.

**Bad input** is the sender's alone: OpenAI's error object (``{"error": {"message", "type":
"invalid_request_error", "param", "code"}}``) with a 4xx, counted as a client error, never against an arm
(an unknown ``model`` is a 404 with ``code: model_not_found``). An arm's failure is ``server_error`` with 503
or 504 (``code: timeout``). The experiment's ``generation_timeouts`` bound each wait: the first token
(``first_token_s``: a failure before it falls back), each later one (``token_s``) and a whole non-streamed
completion (``completion_s``, which also caps the first). A failure after tokens were sent never falls back:
it ends the stream with an ``error`` event and no ``[DONE]``, counted against the arm.

**A client that goes away** (its connection closes) cancels the relay: the upstream stream is closed, so the
model stops generating for it before its next token; the request counts as a client error (499), never
against the arm. Each completed stream is recorded with its figures (``experiments.generation``: TTFT, ITL,
output tokens, tokens/s) and its text, kept for feedback that scores it (``feedback_pending_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from experiments.generation import GenerationSample
from serving.openai_wire import DONE, Answer, RequestError, sse, usage
from serving.router.errors import FieldError, NotFound, RouterError, UpstreamError, UpstreamTimeout
from serving.router.http_door import Disconnected, read_body
from serving.router.llm_upstream import GenStream, TokenEvent
from serving.router.metrics import RequestRef
from serving.router.openai_request import GenerationAsk, model_of, parse_ask
from serving.router.routing import CLIENT_CLOSED, UNASSIGNED, Exchange, Refused, finish, record_refused, route
from serving.router.state import RouterState, get_state
from tunestack.bench.streams import StreamTimer

log = logging.getLogger(__name__)

CHAT_PATH, COMPLETIONS_PATH, MODELS_PATH = "/v1/chat/completions", "/v1/completions", "/v1/models"
ARM_FIELD = "tunestack"
"""The field of every completion object and chunk that names the arm (see the module docstring)."""
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class GenerationExchange(Exchange[GenStream]):
    """An OpenAI completion request as the routing core drives it (see the module docstring)."""

    __slots__ = ("body", "chat", "headers", "ask", "result")
    id_field = "X-Request-Id"

    def __init__(self, model: str, body: dict, chat: bool, headers: dict[bytes, bytes]):
        self.experiment, self.body, self.chat, self.headers = model, body, chat, headers
        request_id = headers.get(b"x-request-id")
        self.request_id = request_id.decode("latin-1") if request_id else None
        self.arm, self.key, self.result = None, None, None

    async def read(self) -> None:
        try:
            self.ask: GenerationAsk = parse_ask(self.body, self.chat)
        except RequestError as e:
            raise FieldError(str(e), e.param) from None
        self.parameters = {}

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.encode("latin-1"))
        return value.decode("latin-1") if value is not None else None

    def default_key(self) -> str | None:
        return self.ask.user

    async def check(self, arm: str) -> None:
        """Nothing more to check: ``read`` checked every field, and the model checks the rest (its 400s are the
        caller's)."""

    def send(self, arm: str) -> Awaitable[GenStream]:
        timeouts = self.exp.generation_timeouts
        if not self.ask.stream and timeouts.completion_s < timeouts.first_token_s:  # the whole bounds the first
            timeouts = dataclasses.replace(timeouts, first_token_s=timeouts.completion_s)
        return self.state.llm_upstream.open(self.state.target(self.exp, arm), self.ask.upstream_body(), timeouts)

    def outcome(self, answer: GenStream) -> tuple[tuple[str, ...], list[float]]:
        return (), []

    def generation(self, answer: GenStream) -> tuple[GenerationSample, str] | None:
        return self.result

    def texts(self) -> list[str]:
        return []

    async def shadow(self) -> tuple[str, ...]:
        raise NotImplementedError("a generative experiment's traffic is not copied to a shadow")


def openai_error(e: RouterError) -> RequestError:
    """The router's error as OpenAI's: the field at fault for a bad value, ``model_not_found`` for an unknown
    experiment."""
    if isinstance(e, NotFound):
        return RequestError(e.status_code, str(e), "model", "model_not_found")
    return RequestError(e.status_code, str(e), getattr(e, "param", None))


async def _send_json(send, status: int, data: dict, headers: list[tuple[bytes, bytes]]) -> None:
    content = orjson.dumps(data)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content)),
                            *headers]})
    await send({"type": "http.response.body", "body": content})


def _id_headers(request_id: str, arm: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-request-id", request_id.encode("latin-1"))]
    return headers + ([(b"x-variant", arm.encode("latin-1"))] if arm else [])


async def _events(stream: GenStream, deadline: float | None) -> AsyncIterator[TokenEvent]:
    yield stream.first
    async for event in stream.rest(deadline):
        yield event


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Relay:
    """One answer's relay from the arm's stream to the client, timed from the request's arrival."""

    def __init__(self, ex: GenerationExchange, stream: GenStream, send):
        self.ex, self.stream, self.send = ex, stream, send
        arm = ex.exp.arm(ex.served)
        self.answer = Answer(ex.experiment, ex.chat, {ARM_FIELD: {"arm": ex.served, "version": arm.version,
                                                                  "request_id": ex.request_id}})
        self.timer = StreamTimer(sent_s=ex.start)
        self.text: list[str] = []
        self.last = stream.first
        self.started = False

    async def _emit(self, data: dict | str) -> None:
        await self.send({"type": "http.response.body", "body": sse(data).encode(), "more_body": True})

    async def run(self) -> None:
        """Relay to the end (streamed or whole); ``UpstreamError`` when the arm breaks off."""
        ask, answer = self.ex.ask, self.answer
        with_usage = ask.stream and ask.include_usage
        if ask.stream:
            await self.send({"type": "http.response.start", "status": 200,
                             "headers": [*_SSE_HEADERS, *_id_headers(self.ex.request_id, self.ex.served)]})
            self.started = True
            if ask.chat:
                await self._emit(answer.chunk({"role": "assistant", "content": ""}, with_usage=with_usage))
        # a whole completion is bounded as a whole, from the request's arrival; a stream only token by token
        deadline = None if ask.stream else (asyncio.get_running_loop().time() - (time.perf_counter() - self.ex.start)
                                            + self.ex.exp.generation_timeouts.completion_s)
        async for event in _events(self.stream, deadline):
            self.last = event
            self.timer.chunk(True, event.at)
            if event.text:
                self.text.append(event.text)
                if ask.stream:
                    await self._emit(answer.chunk({"content": event.text}, with_usage=with_usage))
        counts = usage(self.last.prompt_tokens, self.last.completion_tokens)
        if not ask.stream:
            body = answer.completion("".join(self.text), self.last.finish_reason or "stop", counts)
            await _send_json(self.send, 200, body, _id_headers(self.ex.request_id, self.ex.served))
            return
        await self._emit(answer.chunk({}, self.last.finish_reason, with_usage=with_usage))
        if with_usage:
            await self._emit(answer.usage_chunk(counts))
        await self.send({"type": "http.response.body", "body": sse(DONE).encode(), "more_body": False})

    async def fail(self, e: UpstreamError) -> None:
        """The arm broke off: an ``error`` event ends a stream already answering, else a 5xx answer."""
        body = RequestError(e.status_code, str(e), code="timeout" if isinstance(e, UpstreamTimeout) else None).body()
        if self.started:
            await self._emit(body)
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _send_json(self.send, e.status_code, body, _id_headers(self.ex.request_id, self.ex.served))

    def record(self) -> tuple[GenerationSample, str]:
        sample = GenerationSample.of(self.timer.finish(self.last.completion_tokens))
        return sample, "".join(self.text)


async def _refuse_early(state: RouterState, send, e: RouterError, headers: dict[bytes, bytes]) -> None:
    """A body refused before it names an experiment (malformed JSON, no model): recorded as the caller's."""
    request_id = (headers.get(b"x-request-id") or b"").decode("latin-1") or state.request_ids.new()
    record_refused(state, e, None, None, request_id, state.period)
    error = openai_error(e)
    await _send_json(send, error.status, error.body(), _id_headers(request_id, None))


async def completions(scope, receive, send, chat: bool) -> None:
    """Answer one completion request (see the module docstring), then record it."""
    state: RouterState = scope["app"].state.router
    headers = dict(scope["headers"])
    try:
        body = orjson.loads(await read_body(receive, headers.get(b"content-length"), state.config.max_body_bytes))
        model = model_of(body)
    except Disconnected:
        return
    except RouterError as e:
        return await _refuse_early(state, send, e, headers)
    except orjson.JSONDecodeError as e:
        return await _refuse_early(state, send, FieldError(f"the request body is not valid JSON: {e}"), headers)
    except RequestError as e:
        return await _refuse_early(state, send, FieldError(str(e), e.param), headers)
    ex = GenerationExchange(model, body, chat, headers)
    try:
        stream = await route(state, ex)
    except Refused as r:
        error = openai_error(r.error)
        return await _send_json(send, error.status, error.body(), _id_headers(r.request_id, r.arm))
    relay = Relay(ex, stream, send)
    await _relay(state, ex, relay, receive)


async def _relay(state: RouterState, ex: GenerationExchange, relay: Relay, receive) -> None:
    """Relay until done or until the client goes away (then the upstream stream is closed: the model stops)."""
    work = asyncio.ensure_future(relay.run())
    gone = asyncio.ensure_future(_until_disconnect(receive))
    state.recorder.inflight.inc()
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            log.info("request %s: the client went away after %d tokens; its stream is closed", ex.request_id,
                     relay.last.completion_tokens)
            state.recorder.client_error(ex.served, CLIENT_CLOSED)
            return
        try:
            work.result()
        except UpstreamError as e:
            ref = RequestRef(ex.request_id, ex.key, ex.arm or UNASSIGNED, ex.period)
            state.recorder.error(ex.served, e.status_code, ref)
            with contextlib.suppress(Exception):
                await relay.fail(e)
            return
        except Exception:  # the client's socket failed mid-answer, or a bug: logged, not the arm's
            log.exception("relaying request %s failed", ex.request_id)
            return
        ex.result = relay.record()
        finish(state, ex, relay.stream, time.perf_counter() - ex.start)
    finally:
        state.recorder.inflight.dec()
        gone.cancel()
        await relay.stream.drain()
        relay.stream.close()


class CompletionsEndpoint:
    """``completions`` as the route table's ASGI app (``chat``: the chat endpoint)."""

    def __init__(self, chat: bool):
        self.chat = chat

    async def __call__(self, scope, receive, send) -> None:
        await completions(scope, receive, send, self.chat)


async def models(request: Request) -> Response:
    """The experiment as OpenAI's model list (one model: the experiment), with its arms."""
    exp = get_state(request).experiment
    return JSONResponse({"object": "list", "data": [{"id": exp.name, "object": "model", "created": 0,
                                                     "owned_by": "tunestack", ARM_FIELD: {"arms": list(exp.arm_names)}}]})


routes = [
    Route(CHAT_PATH, CompletionsEndpoint(chat=True), methods=["POST"]),
    Route(COMPLETIONS_PATH, CompletionsEndpoint(chat=False), methods=["POST"]),
    Route(MODELS_PATH, models, methods=["GET"]),
]
