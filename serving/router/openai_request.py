"""An OpenAI completion request as the router's OpenAI door reads it: checked field by field, then mapped onto
the served causal LM's generate request (``export.llm_request``).

Two endpoints, two shapes:

- ``POST /v1/chat/completions``: ``messages`` (``[{"role": "system"|"user"|"assistant", "content": "..."}]``),
  sent to the model as its ``messages`` input, which the model renders with its own chat template: the
  template that rendered its training prompts (``export/chat.py``, tested equal to transformers'
  ``apply_chat_template``), shipped in each version folder, so every arm renders as it was trained.
- ``POST /v1/completions``: ``prompt``, one string, sent as ``text_input`` (fed to the model as it is).

Both take ``model`` (the experiment), ``max_tokens`` (chat also ``max_completion_tokens``, which wins; default
``serving.openai_wire.DEFAULT_MAX_TOKENS``), ``temperature``, ``top_p``, ``stop`` (a string or up to 4),
``seed``, ``n`` (1 only), ``stream``, ``stream_options`` (``include_usage`` only), ``user`` (the sticky key
when the experiment's sticky header is absent) and vLLM's ``ignore_eos`` (benchmarks). A field given as
``null`` is left out, as OpenAI's clients do. Any other field and every bad value is named in one
``RequestError`` (400), whose ``param`` is the first field at fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from export.chat import parse_messages
from export.contract import GENERATIVE
from export.decoding import sampling_problems
from export.errors import GenerationError
from serving.openai_wire import DEFAULT_MAX_TOKENS, RequestError

COMMON_FIELDS = ("model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
                 "user", "ignore_eos")
"""The fields both endpoints accept."""
CHAT_FIELDS = (*COMMON_FIELDS, "messages", "max_completion_tokens")
COMPLETION_FIELDS = (*COMMON_FIELDS, "prompt")


@dataclass(frozen=True)
class GenerationAsk:
    """A checked completion request."""

    chat: bool
    """A chat completion (``messages``), else a text completion (``prompt``)."""
    model: str
    """The experiment it addresses."""
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    ignore_eos: bool
    stream: bool
    include_usage: bool
    """Streamed: end with a chunk carrying ``usage`` (OpenAI's ``stream_options.include_usage``)."""
    user: str | None
    """The caller's end-user id: the sticky key when the experiment's sticky header is absent."""

    def upstream_body(self) -> dict:
        """The JSON body of Triton's ``generate_stream`` for this request (inputs and request parameters by
        the names of ``export.contract.GENERATIVE`` and ``export.llm_request``)."""
        body: dict = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                      "ignore_eos": self.ignore_eos}
        if self.messages is not None:
            body[GENERATIVE.input_messages] = json.dumps(self.messages, ensure_ascii=False)
        else:
            body[GENERATIVE.input_text] = self.prompt
        if self.stop:
            body[GENERATIVE.input_stop] = list(self.stop)
        if self.seed is not None:
            body["seed"] = self.seed
        return body


def model_of(body: object) -> str:
    """The ``model`` a decoded body addresses (checked before the rest: it names the experiment)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, f"model must be the experiment's name (a string), got {model!r}", "model")
    return model


def parse_ask(body: Mapping, chat: bool) -> GenerationAsk:
    """The request in ``body`` (a decoded JSON object); ``RequestError`` naming every problem."""
    given = {k: v for k, v in body.items() if v is not None}
    problems: list[tuple[str | None, str]] = []
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        problems.append((unknown[0], f"unsupported field(s) {', '.join(map(repr, unknown))}; "
                                     f"this endpoint accepts: {', '.join(allowed)}"))
    messages, prompt = _prompt(given, chat, problems)
    max_tokens = given.get("max_completion_tokens", given.get("max_tokens", DEFAULT_MAX_TOKENS))
    stop = given.get("stop", ())
    values = {"max_tokens": max_tokens, "temperature": given.get("temperature", 0.0), "top_p": given.get("top_p", 1.0),
              "seed": given.get("seed"), "stop": (stop,) if isinstance(stop, str) else
              tuple(stop) if isinstance(stop, list) else stop, "ignore_eos": given.get("ignore_eos", False)}
    tokens_field = "max_completion_tokens" if "max_completion_tokens" in given else "max_tokens"
    for problem in sampling_problems(values):
        field = problem.split(" ", 1)[0]
        problems.append((tokens_field if field == "max_tokens" else field,
                         problem.replace("max_tokens", tokens_field, 1) if field == "max_tokens" else problem))
    n = given.get("n", 1)
    if n != 1 or isinstance(n, bool):
        problems.append(("n", f"n must be 1 (one choice per request), got {n!r}"))
    options = given.get("stream_options", {})
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        problems.append(("stream_options", f"stream_options must be an object with only include_usage, got {options!r}"))
        options = {}
    for name, value in (("stream", given.get("stream", False)),
                        ("stream_options.include_usage", options.get("include_usage", False))):
        if not isinstance(value, bool):
            problems.append((name, f"{name} must be true or false, got {value!r}"))
    user = given.get("user")
    if user is not None and (not isinstance(user, str) or not user.isprintable() or len(user) > 256):
        problems.append(("user", f"user must be printable text of at most 256 characters, got {str(user)[:80]!r}"))
    if problems:
        kind = "chat completion" if chat else "completion"
        raise RequestError(400, f"invalid {kind} request:\n  - " + "\n  - ".join(m for _, m in problems),
                           problems[0][0])
    return GenerationAsk(chat, body["model"], prompt, messages, values["max_tokens"], float(values["temperature"]),
                         float(values["top_p"]), values["stop"], values["seed"], values["ignore_eos"],
                         given.get("stream", False), options.get("include_usage", False), user or None)


def _prompt(given: Mapping, chat: bool, problems: list) -> tuple[list[dict[str, str]] | None, str | None]:
    """The chat messages or the prompt; problems appended."""
    if chat:
        if "messages" not in given:
            problems.append(("messages", "messages is missing; expected a non-empty list of {role, content} objects"))
            return None, None
        try:
            return parse_messages(json.dumps(given["messages"]), "messages"), None
        except GenerationError as e:
            problems.append(("messages", str(e)))
            return None, None
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        problems.append(("prompt", f"prompt must be a non-empty string (one prompt per request), got {str(prompt)[:80]!r}"))
        return None, None
    return None, prompt
