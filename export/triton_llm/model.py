"""Triton python-backend model, decoupled: a causal LM streaming its tokens, ONNX Runtime with the KV cache.

``export.publish_causal`` copies this file into every published version folder, with the decode loop it
runs under ``VERSION/runtime/`` (``export/generate.py``, ``scheduler.py``, ... and the ``tunestack`` modules
they import), next to ``model.onnx``, the tokenizer files and ``generation.json``. Its first lines put that
copy first on ``sys.path``, so a version runs the code it was published with and the Triton stub needs
nothing beyond the venv (numpy, onnxruntime, tokenizers, jinja2).

A request (``export.llm_request``: the prompt as ``text_input`` or chat ``messages``, ``stop`` strings, the
sampling parameters) is checked in ``execute``, which then hands it to the scheduler and returns; a
response per token follows from the scheduler's thread through the request's response sender:
``text_output`` (the text that token adds), ``completion_tokens`` (tokens so far), ``prompt_tokens`` and
``finish_reason`` ('' until the last response, which carries Triton's final flag). ``stream: false``
sends the whole completion as one response instead.

- A bad request gets one error response, ``TritonError.INVALID_ARG`` (HTTP 400), naming the field and the
  value, its message starting with ``export.llm_request.REJECTION_PREFIX`` (gRPC's stream carries the
  message, not the code); the other requests are not touched.
- A stream whose client went away (HTTP connection closed, gRPC stream cancelled: Triton marks the
  request cancelled, ``response_sender.is_cancelled()``) stops before its next token, leaves the
  batch, is counted in ``tunestack_llm_cancelled_total`` and logged ("cancelled after N tokens").
- Config parameters (``config.pbtxt``, written by ``export.triton_config.causal_model_config``):
  ``batching`` (``continuous``: iteration-level batching, one ONNX call per step for every active stream;
  ``none``: a thread per stream), ``max_sequences`` (streams decoded at once; the rest wait) and
  ``intra_op_threads`` (ONNX Runtime threads; 0 = every core).
- Metrics on Triton's ``/metrics`` (label ``model``, ``version``): ``tunestack_llm_generated_tokens_total``,
  ``tunestack_llm_decode_steps_total`` (tokens / steps = the mean batch) and ``tunestack_llm_cancelled_total``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent / "runtime"
if RUNTIME.is_dir():  # a published version: its own copy of the decode loop comes before the installed one
    sys.path.insert(0, str(RUNTIME))

import numpy as np  # noqa: E402

import export.generate  # noqa: E402
from export.chat import ChatTemplate  # noqa: E402
from export.contract import GENERATIVE  # noqa: E402
from export.errors import GenerationError  # noqa: E402
from export.generate import Generator, Token  # noqa: E402
from export.llm_request import REJECTION_PREFIX, GenerationRequest, parse_request  # noqa: E402
from export.scheduler import Sink, make_scheduler  # noqa: E402

try:  # only importable inside Triton's python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported in-process (the exporter reads the parameter names below)
    pb_utils = None

BATCHING_PARAMETER = "batching"
"""Config parameter: ``continuous`` or ``none`` (``export.contract.DECODE_BATCHING``)."""
MAX_SEQUENCES_PARAMETER = "max_sequences"
"""Config parameter: streams decoded at once."""
THREADS_PARAMETER = "intra_op_threads"
"""Config parameter: ONNX Runtime intra-op threads (0: every core)."""
TOKENS_METRIC = "tunestack_llm_generated_tokens_total"
"""Counter: tokens generated (and sent) by this model version."""
STEPS_METRIC = "tunestack_llm_decode_steps_total"
"""Counter: scheduler steps (continuous batching: ONNX decode calls for every active stream at once)."""
CANCELLED_METRIC = "tunestack_llm_cancelled_total"
"""Counter: streams stopped because their client went away."""

if RUNTIME.is_dir() and not Path(export.generate.__file__).resolve().is_relative_to(RUNTIME):
    raise ImportError(f"the decode loop was imported from {export.generate.__file__}, not from this version's "
                      f"{RUNTIME}: another 'export' package was imported first")


class Metrics:
    """This version's counters on Triton's metrics endpoint."""

    def __init__(self, model: str, version: str):
        labels = {"model": model, "version": version}
        kind = pb_utils.MetricFamily.COUNTER
        # a family must outlive its metrics: keep both
        self.families = [pb_utils.MetricFamily(name, text, kind) for name, text in (
            (TOKENS_METRIC, "Tokens generated"), (STEPS_METRIC, "Decode steps"),
            (CANCELLED_METRIC, "Streams stopped because their client went away"))]
        self.tokens, self.steps, self.cancelled = (family.Metric(labels=labels) for family in self.families)

    def step(self, tokens: int) -> None:
        if tokens:
            self.tokens.increment(tokens)
            self.steps.increment(1)


def error_response(message: str, code: str = "INVALID_ARG"):
    """A response carrying ``TritonError(message, code)`` (INVALID_ARG: HTTP 400 / gRPC INVALID_ARGUMENT)."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code)))


def output_tensors(text: str, completion_tokens: int, prompt_tokens: int, finish_reason: str | None) -> list:
    return [pb_utils.Tensor(GENERATIVE.output_text, np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor(GENERATIVE.output_completion_tokens, np.array([completion_tokens], dtype=np.int32)),
            pb_utils.Tensor(GENERATIVE.output_prompt_tokens, np.array([prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor(GENERATIVE.output_finish_reason, np.array([(finish_reason or "").encode()], dtype=np.object_))]


class TritonSink(Sink):
    """One request's response sender as an ``export.scheduler.Sink``."""

    def __init__(self, request, parsed: GenerationRequest, metrics: Metrics):
        self.sender = request.get_response_sender()
        self.request_id = request.request_id() or "-"
        self.stream, self.prompt_tokens, self.metrics = parsed.stream, len(parsed.prompt_ids), metrics
        self.text: list[str] = []

    def emit(self, token: Token, count: int) -> None:
        final = token.finish_reason is not None
        if self.stream:
            response = pb_utils.InferenceResponse(output_tensors(token.text, count, self.prompt_tokens, token.finish_reason))
        else:
            self.text.append(token.text)
            if not final:
                return
            response = pb_utils.InferenceResponse(output_tensors("".join(self.text), count, self.prompt_tokens,
                                                                 token.finish_reason))
        self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

    def cancelled(self) -> bool:
        return self.sender.is_cancelled()

    def end_cancelled(self, count: int) -> None:
        self.metrics.cancelled.increment(1)
        pb_utils.Logger.log_info(f"request {self.request_id} cancelled after {count} tokens")
        self._close(error_response(f"request cancelled after {count} tokens", "CANCELLED"))

    def fail(self, error: BaseException) -> None:
        self._close(error_response(f"generation failed: {type(error).__name__}: {error}", "INTERNAL"))

    def _close(self, response) -> None:
        try:
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # noqa: BLE001 - the client is gone; nothing is waiting for this response
            pb_utils.Logger.log_warn(f"request {self.request_id}: final response not delivered: {e}")


def read_request(request) -> tuple[bytes | None, bytes | None, list[bytes] | None, dict]:
    """The raw inputs and parameters of a Triton request."""
    def tensor(name: str):
        found = pb_utils.get_input_tensor_by_name(request, name)
        return None if found is None else found.as_numpy().reshape(-1).tolist()

    text, messages, stop = (tensor(n) for n in (GENERATIVE.input_text, GENERATIVE.input_messages, GENERATIVE.input_stop))
    return (text[0] if text else None, messages[0] if messages else None, stop,
            json.loads(request.parameters() or "{}"))


class TritonPythonModel:
    """One instance: a Generator (ONNX Runtime session, tokenizer), the chat template and a scheduler."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / str(args["model_version"])
        if not (folder / GENERATIVE.generation_file).is_file():
            folder = Path(__file__).resolve().parent
        self.generator = Generator.from_folder(folder, threads=int(params.get(THREADS_PARAMETER) or 0))
        self.chat = ChatTemplate.from_folder(folder)
        self.metrics = Metrics(args["model_name"], str(args["model_version"]))
        self.scheduler = make_scheduler(params.get(BATCHING_PARAMETER) or "continuous", self.generator,
                                        int(params.get(MAX_SEQUENCES_PARAMETER) or 8), on_step=self.metrics.step)

    def execute(self, requests: list) -> None:
        """Check each request and hand it to the scheduler; a bad one gets its error response, alone."""
        for request in requests:
            try:
                text, messages, stop, parameters = read_request(request)
                parsed = parse_request(text, messages, stop, parameters, self.generator, self.chat)
            except Exception as e:  # noqa: BLE001 - whatever is wrong with one request fails that request only
                message = str(e) if isinstance(e, GenerationError) else f"{REJECTION_PREFIX} cannot read it: {type(e).__name__}: {e}"
                request.get_response_sender().send(error_response(message),
                                                   flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            self.scheduler.submit(parsed.prompt_ids, parsed.params, TritonSink(request, parsed, self.metrics))
        return None

    def finalize(self) -> None:
        self.scheduler.close()
