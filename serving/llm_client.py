"""Stream a completion from the served causal LM: gRPC ``ModelStreamInfer`` or HTTP ``generate_stream`` (SSE).

    from serving.llm_client import TritonLLM
    with TritonLLM("127.0.0.1:8001", protocol="grpc") as llm:
        for chunk in llm.stream("Once upon a time", max_tokens=32, stop=["\\n"]):
            print(chunk.text, end="", flush=True)
        done = llm.generate(messages=[{"role": "user", "content": "hi"}], temperature=0.7, seed=1)

    python -m serving.llm_client "Once upon a time" --max-tokens 32
    python -m serving.llm_client --protocol http --messages '[{"role": "user", "content": "hi"}]'

A request is the prompt (``text``) or chat ``messages``, ``stop`` strings, and sampling parameters as
keyword arguments (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``ignore_eos``: request parameters,
``export.llm_request``); names come from ``export.contract.GENERATIVE``. Each streamed ``Chunk`` is one
response of the model: the text it adds, the tokens so far, the prompt's tokens and, on the last one,
the finish reason. Leaving the iterator early (``break``, an exception) cancels the request: the gRPC
stream is cancelled, the HTTP connection closed, and the model stops generating for it.

A request the model refuses as the caller's mistake raises ``GenerationRejected`` (HTTP 400; over gRPC, whose
stream carries an error's message but not its code, a message starting with
``export.llm_request.REJECTION_PREFIX``; the message names the field), anything else ``InferenceError``. One ``TritonLLM`` runs
one stream at a time (tritonclient's gRPC client holds one stream): use one per thread or Locust user.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from export.contract import GENERATIVE
from export.llm_request import REJECTION_PREFIX
from serving.client import DEFAULT_URLS, PROTOCOLS, unreachable
from serving.errors import InferenceError
from tunestack.cli import option, parse_dataclass
from tunestack.problems import raise_problems


class GenerationRejected(InferenceError):
    """The model refused the request as the caller's mistake (see the module docstring)."""


@dataclass(frozen=True)
class Chunk:
    """One streamed response."""

    text: str
    """The text this response adds ('' while the model holds text back)."""
    completion_tokens: int
    """Tokens generated so far."""
    prompt_tokens: int
    finish_reason: str | None
    """None until the last response: ``stop`` or ``length``."""
    model_version: str = ""
    received_s: float = field(default_factory=time.perf_counter)
    """``time.perf_counter()`` when the client had it (time to first token, inter-token latency)."""


@dataclass(frozen=True)
class Completion:
    """A whole completion (``TritonLLM.generate``)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str = ""


def request_inputs(text: str | None, messages: Sequence[dict] | None, stop: Sequence[str]) -> dict[str, object]:
    """The input tensors' values by name: the prompt or the messages (as JSON text), and the stop strings."""
    inputs: dict[str, object] = {}
    if text is not None:
        inputs[GENERATIVE.input_text] = text
    if messages is not None:
        inputs[GENERATIVE.input_messages] = json.dumps(list(messages), ensure_ascii=False)
    if stop:
        inputs[GENERATIVE.input_stop] = list(stop)
    return inputs


def chunk_from_values(values: dict, version: str = "") -> Chunk:
    """A Chunk from one response's outputs by name (decoded JSON, or tensors' first elements)."""
    def text(value) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    finish = text(values[GENERATIVE.output_finish_reason])
    return Chunk(text(values[GENERATIVE.output_text]), int(values[GENERATIVE.output_completion_tokens]),
                 int(values[GENERATIVE.output_prompt_tokens]), finish or None, version)


class TritonLLM:
    """A streaming client of the served causal LM (see the module docstring).

    Args:
        url: ``host:port`` without scheme; default 127.0.0.1:8001 (grpc) / 127.0.0.1:8000 (http).
        protocol: grpc or http.
        model: the Triton model name.
        version: a version number as a string; empty lets Triton choose.
        timeout: seconds to wait for each response.
    """

    def __init__(self, url: str | None = None, protocol: str = "grpc", model: str = GENERATIVE.default_model_name,
                 version: str = "", timeout: float = 60.0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
        self.protocol, self.model, self.version, self.timeout = protocol, model, str(version or ""), timeout
        self.url = url or DEFAULT_URLS[protocol]
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self.module, self.client = grpcclient, grpcclient.InferenceServerClient(self.url)
        else:
            import httpx

            self.client = httpx.Client(base_url=f"http://{self.url}", timeout=timeout)

    def stream(self, text: str | None = None, *, messages: Sequence[dict] | None = None, stop: Sequence[str] = (),
               request_id: str = "", **parameters) -> Iterator[Chunk]:
        """The model's responses as they arrive; the last one has a ``finish_reason``. ``request_id`` names the
        request in Triton's log."""
        inputs = request_inputs(text, messages, stop)
        parameters = {k: v for k, v in parameters.items() if v is not None}
        if self.protocol == "grpc":
            return self._grpc(inputs, parameters, request_id)
        return self._http({**inputs, **({"id": request_id} if request_id else {})}, parameters)

    def generate(self, text: str | None = None, *, messages: Sequence[dict] | None = None, stop: Sequence[str] = (),
                 request_id: str = "", **parameters) -> Completion:
        """The whole completion (the stream, collected)."""
        chunks = list(self.stream(text, messages=messages, stop=stop, request_id=request_id, **parameters))
        last = chunks[-1]
        return Completion("".join(c.text for c in chunks), last.finish_reason or "", last.prompt_tokens,
                          last.completion_tokens, last.model_version)

    def _http(self, inputs: dict, parameters: dict) -> Iterator[Chunk]:
        path = f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "") + "/generate_stream"
        with self.client.stream("POST", path, json={**inputs, **parameters}) as response:
            rejected = response.status_code == 400
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                response.read()  # an error Triton answered before the model ran: one JSON object
                raise _http_error(rejected, response.text)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = json.loads(line[len("data:"):])
                if "error" in data:
                    raise _http_error(rejected, data["error"])
                chunk = chunk_from_values(data, str(data.get("model_version", "")))
                yield chunk
                if chunk.finish_reason:
                    return
        raise InferenceError("the stream ended without a final response")

    def _grpc(self, inputs: dict, parameters: dict, request_id: str) -> Iterator[Chunk]:
        from tritonclient.utils import InferenceServerException

        responses: queue.SimpleQueue = queue.SimpleQueue()
        tensors = []
        for name, value in inputs.items():
            data = np.array([v.encode("utf-8") for v in (value if isinstance(value, list) else [value])], dtype=np.object_)
            tensor = self.module.InferInput(name, list(data.shape), "BYTES")
            tensor.set_data_from_numpy(data)
            tensors.append(tensor)
        self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
        finished = False
        try:
            self.client.async_stream_infer(self.model, tensors, model_version=self.version, request_id=request_id,
                                           parameters=parameters)
            while not finished:
                try:
                    result, error = responses.get(timeout=self.timeout)
                except queue.Empty:
                    raise InferenceError(f"no response from {self.model} in {self.timeout} s") from None
                if error is not None:
                    finished = True  # the model sent its final (error) response
                    raise _grpc_error(error) if isinstance(error, InferenceServerException) else InferenceError(str(error))
                values = {o.name: result.as_numpy(o.name).reshape(-1)[0] for o in result.get_response().outputs}
                chunk = chunk_from_values(values, result.get_response().model_version)
                finished = chunk.finish_reason is not None
                yield chunk
        finally:
            self.client.stop_stream(cancel_requests=not finished)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonLLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _http_error(rejected: bool, body: str) -> InferenceError:
    try:
        message = json.loads(body)["error"] if body.lstrip().startswith("{") else body
    except (ValueError, KeyError):
        message = body
    return (GenerationRejected if rejected else InferenceError)(message)


def _grpc_error(error) -> InferenceError:
    """The stream's error as the exception it means: its responses carry a message but no code, and the model
    starts the message of every request it refuses with ``REJECTION_PREFIX``."""
    message = error.message() or ""
    return (GenerationRejected if message.startswith(REJECTION_PREFIX) else InferenceError)(message)


@dataclass
class LLMClientArgs:
    """Stream a completion from the served causal LM over gRPC or HTTP."""

    text: str | None = option(None, positional=True)
    """The prompt, as fed to the model."""
    messages: str | None = None
    """Chat messages as JSON instead of a prompt: '[{"role": "user", "content": "..."}]'."""
    protocol: str = "grpc"
    """grpc (ModelStreamInfer) or http (generate_stream)."""
    url: str | None = None
    """host:port; default 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http."""
    model: str = GENERATIVE.default_model_name
    """Triton model name."""
    version: str = ""
    """Model version (default: the newest ready one)."""
    max_tokens: int | None = None
    """The most new tokens (the model's default when not given)."""
    temperature: float | None = None
    """0: greedy; up to 2."""
    top_p: float | None = None
    """Nucleus sampling mass, (0, 1]."""
    seed: int | None = None
    """Seed of the draws."""
    stop: tuple[str, ...] = option((), repeat=True)
    """A stop string (repeat for more)."""

    def __post_init__(self) -> None:
        problems = [] if (self.text is None) != (self.messages is None) else ["give a prompt or --messages (one)"]
        if self.protocol not in PROTOCOLS:
            problems.append(f"unknown protocol {self.protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
        raise_problems(problems, ValueError, "client arguments")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_dataclass(LLMClientArgs, argv, prog="python -m serving.llm_client", description=__doc__.split("\n\n")[0])
    try:
        messages = json.loads(args.messages) if args.messages else None
        with TritonLLM(args.url, args.protocol, args.model, args.version) as llm:
            for chunk in llm.stream(args.text, messages=messages, stop=args.stop, max_tokens=args.max_tokens,
                                    temperature=args.temperature, top_p=args.top_p, seed=args.seed):
                print(chunk.text, end="", flush=True)
        print(f"\n[{chunk.finish_reason}: {chunk.prompt_tokens} prompt + {chunk.completion_tokens} completion tokens]")
    except (InferenceError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a connection refused etc.: one line, not a traceback
        return unreachable(args.url, args.protocol, e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
