"""One generation request as the served causal LM receives it -> the prompt's token ids, its ``SamplingParams``
and whether to stream; every problem named (field and value) in one ``GenerationError``, the sender's 400.

What a request carries (names from ``export.contract.GENERATIVE``):

- input tensors: ``text_input`` (the prompt as fed to the model) or ``messages`` (chat messages as JSON
  text, rendered with the model's chat template), exactly one of them; ``stop`` (stop strings, optional).
  Lists travel as tensors because request parameters cannot hold them.
- request parameters (typed scalars): ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``ignore_eos``
  (``export.decoding.SamplingParams``) and ``stream`` (default true: one response per token; false: one
  response with the whole completion, as Triton's non-streaming ``/generate`` endpoint needs).
  Triton's generate endpoints pass every JSON key that is not an input name as a request parameter
  (top level or inside ``"parameters"``); gRPC clients set them with ``parameters=``. Parameters as
  typed values let the model name a wrong type itself (a tensor of the wrong type fails in Triton's
  JSON parser first, with a 500 that names no field).

An unknown parameter is refused (a misspelt ``max_token`` would otherwise be silently ignored), except
Triton's own (``triton_*``) and the generate endpoint's request ``id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from export.chat import ChatTemplate, parse_messages
from export.contract import GENERATIVE
from export.decoding import SamplingParams, sampling_problems
from export.errors import GenerationError
from export.generate import Generator
from tunestack.problems import raise_problems

REQUEST = "generation request"
"""What ``raise_problems`` calls a request: a refusal reads "invalid generation request:" and its problems."""
REJECTION_PREFIX = f"invalid {REQUEST}:"
"""How every refusal's message starts. Over gRPC's ``ModelStreamInfer`` a response carries an error's message
but not its code, so this is how a client tells the caller's mistake from the model's failure there."""
STREAM_PARAMETER = "stream"
"""Request parameter: true (default) streams a response per token; false sends the completion in one."""
SAMPLING_PARAMETERS = tuple(f.name for f in fields(SamplingParams) if f.name != "stop")
"""The request parameters that are ``SamplingParams`` fields (``stop`` is an input tensor)."""
PARAMETERS = (*SAMPLING_PARAMETERS, STREAM_PARAMETER)
"""Every request parameter the model reads."""
IGNORED_PARAMETERS = ("id",)
"""Parameters the model leaves alone: the generate endpoint passes the request ``id`` as one."""
TRITON_PREFIX = "triton_"
"""Triton's own request parameters (e.g. ``triton_enable_empty_final_response``) start with this."""


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request, ready for ``export.scheduler``."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool


def _text(value: bytes | str | None, field: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{field} is not valid UTF-8 ({e.reason} at byte {e.start}); expected UTF-8 text")
            return None
    if not value:
        problems.append(f"{field} is empty; expected text")
        return None
    return value


def _defaults() -> dict[str, Any]:
    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(SamplingParams)}


def _parameters(parameters: Mapping[str, Any], stop: tuple[str, ...], problems: list[str]) -> tuple[dict, bool]:
    """The SamplingParams values and the stream flag; problems appended."""
    unknown = sorted(k for k in parameters if k not in PARAMETERS and k not in IGNORED_PARAMETERS
                     and not k.startswith(TRITON_PREFIX))
    if GENERATIVE.input_stop in unknown:
        problems.append(f"parameter {GENERATIVE.input_stop!r}: send stop strings as the input "
                        f"{GENERATIVE.input_stop!r} (a list of strings), not as a parameter")
        unknown.remove(GENERATIVE.input_stop)
    if unknown:
        problems.append(f"unknown parameter(s) {', '.join(map(repr, unknown))}; expected: {', '.join(PARAMETERS)}")
    stream = parameters.get(STREAM_PARAMETER, True)
    if not isinstance(stream, bool):
        problems.append(f"{STREAM_PARAMETER} must be true or false, got {stream!r}")
    values = _defaults() | {k: parameters[k] for k in SAMPLING_PARAMETERS if k in parameters} | {"stop": stop}
    problems += sampling_problems(values)
    return values, stream is not False


def parse_request(text: bytes | str | None, messages: bytes | str | None, stop: Sequence[bytes | str] | None,
                  parameters: Mapping[str, Any], generator: Generator, chat: ChatTemplate | None) -> GenerationRequest:
    """Check a request's inputs and parameters, render and encode its prompt (see the module docstring)."""
    problems: list[str] = []
    prompt = _text(text, GENERATIVE.input_text, problems)
    chat_text = _text(messages, GENERATIVE.input_messages, problems)
    stops = tuple(s for i, value in enumerate(stop or ())
                  if (s := _text(value, f"{GENERATIVE.input_stop}[{i}]", problems)) is not None)
    if text is None and messages is None:
        problems.append(f"give the prompt as {GENERATIVE.input_text!r} or chat messages as {GENERATIVE.input_messages!r}")
    elif text is not None and messages is not None:
        problems.append(f"give {GENERATIVE.input_text!r} or {GENERATIVE.input_messages!r}, not both")
    values, stream = _parameters(parameters, stops, problems)
    if not problems:
        try:
            if chat_text is not None:
                if chat is None:
                    raise GenerationError(f"{GENERATIVE.input_messages!r}: this model has no chat template; send the "
                                          f"prompt as {GENERATIVE.input_text!r}")
                prompt = chat.render(parse_messages(chat_text))
            params, ids = SamplingParams(**values), generator.encode(prompt)
            name = GENERATIVE.input_text if text is not None else f"the rendered {GENERATIVE.input_messages}"
            generator.check(ids, params, name)
        except GenerationError as e:
            problems.append(str(e))
    raise_problems(problems, GenerationError, REQUEST)
    return GenerationRequest(ids, params, stream)
