"""The peers' HTTP server: a small FastAPI app with OpenAI's ``POST /v1/chat/completions`` over one engine.

    python -m serving.llm_peers --engine transformers --model-dir runs/llm/merged --port 8090
    python -m serving.llm_peers --engine ortgenai --model-dir runs/llm/ortgenai-fp32 --port 8091

``GET /health`` answers 200 once the model is loaded (the process serves nothing before), ``GET /v1/models``
lists the one model. A streamed completion is a ``StreamingResponse`` over a plain generator, which Starlette
steps in its thread pool, so each request's decoding runs in a worker thread; a bad request is a 4xx
(``serving.llm_peers.openai_api``) before anything runs, and a failure while streaming ends the stream with
an ``error`` event (the status line is already sent).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from export.errors import GenerationError
from serving.llm_peers.engine import Engine, Generation
from serving.llm_peers.openai_api import Answer, ChatRequest, RequestError, parse_chat_request, sse, usage
from serving.openai_stream import CHAT_PATH, DONE

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"
"""Answers 200 once the model is loaded."""


def events(generation: Generation, request: ChatRequest, answer: Answer) -> Iterator[str]:
    """The server-sent events of one streamed completion (see ``serving.llm_peers.openai_api``)."""
    with_usage = request.include_usage
    yield sse(answer.chunk({"role": "assistant", "content": ""}, with_usage=with_usage))
    try:
        for text in generation:
            yield sse(answer.chunk({"content": text}, with_usage=with_usage))
    except Exception as e:  # noqa: BLE001 - the status line is sent: the stream carries the error
        log.exception("generation failed")
        yield sse({"error": {"message": f"generation failed: {e}", "type": "server_error", "param": None,
                             "code": None}})
        return
    yield sse(answer.chunk({}, generation.finish_reason, with_usage=with_usage))
    if with_usage:
        yield sse(answer.usage_chunk(usage(generation.prompt_tokens, generation.completion_tokens)))
    yield sse(DONE)


def create_app(engine: Engine, model: str) -> FastAPI:
    """The app serving ``engine`` under the model name ``model``."""
    app = FastAPI(title=f"{model}: OpenAI-compatible chat completions")

    @app.get(HEALTH_PATH)
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "tunestack"}]}

    @app.post(CHAT_PATH)
    async def chat(http: Request):
        try:
            body = await http.json()
        except ValueError as e:
            return JSONResponse(RequestError(400, f"the request body is not valid JSON: {e}").body(), 400)
        try:
            request = parse_chat_request(body, model)
            generation = engine.start(request)
        except RequestError as e:
            return JSONResponse(e.body(), e.status)
        except GenerationError as e:
            return JSONResponse(RequestError(400, str(e), "messages").body(), 400)
        answer = Answer(model)
        if request.stream:
            return StreamingResponse(events(generation, request, answer), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text = await run_in_threadpool(lambda: "".join(generation))
        return answer.completion(text, generation.finish_reason, usage(generation.prompt_tokens,
                                                                        generation.completion_tokens))

    return app
