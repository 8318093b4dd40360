"""The generative load test's plain pieces (no Locust import): the chat prompts, one streamed completion timed
with vLLM's definitions, and the per-request log the report reads.

- ``read_chat_prompts``: the causal task's held-out prompts as chat messages. ``training/causal_train.py``
  writes them to ``runs/NAME/adapter/heldout.jsonl`` (``{"prompt", "system", "user", "reference"}``) and the
  export carries the file to ``runs/NAME/merged/`` and ``runs/NAME/onnx/``.
- ``stream_completion``: ``POST /v1/chat/completions`` with ``stream: true`` (``serving.openai_stream``), timed
  by ``tunestack.bench.streams.StreamTimer`` as vLLM's ``benchmarks/backend_request_func.py`` times an
  OpenAI chat stream (``async_request_openai_chat_completions``): TTFT to the first chunk with content, a
  gap per later chunk with content, e2e to the stream's last chunk, the output tokens from ``usage``. A
  failure is an HTTP error, a broken stream (a transport error, a chunk that is not JSON, an ``error``
  event) or a stream that ends without ``data: [DONE]``. The arm is the ``X-Variant`` response header, else
  the chunks' ``tunestack.arm`` (an error answer's
  ``X-Variant`` names the arm that failed).
- ``register``: each Locust process that writes CSV appends every streamed completion, as the request event
  carries it, to ``PREFIX_streams-PID.jsonl`` (``read_streams`` reads them back as ``StreamRecord``s).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.measure import ProcessLog
from serving.errors import InferenceError
from serving.llm_client import GenerationRejected
from serving.openai_stream import open_chat
from tunestack.bench.streams import StreamRecord, StreamTimer

CHAT = "chat"
"""The request type of a streamed completion in Locust's statistics (one row per arm)."""
STREAMS_SUFFIX = "_streams-"
"""``PREFIX_streams-PID.jsonl``: one line per streamed completion of Locust process PID."""
HEADER = "X-Variant"
"""The router's response header naming the arm."""


def read_chat_prompts(path: Path) -> tuple[tuple[dict, ...], ...]:
    """The chat messages (an optional system message, then the user's) of each row of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--texts {path} does not exist; the causal task's held-out prompts are written by "
                                "`make train-llm` (runs/NAME/adapter/heldout.jsonl) and carried by `make export-llm` "
                                "to runs/NAME/merged/heldout.jsonl")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not str(row.get("user") or "").strip():
            raise ValueError(f"--texts {path} line {n} has no \"user\" message (keys: {sorted(row) if isinstance(row, dict) else type(row).__name__}); "
                             "expected the causal task's held-out rows {\"system\", \"user\", ...}")
        system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        prompts.append(tuple(system + [{"role": "user", "content": row["user"]}]))
    if not prompts:
        raise ValueError(f"--texts {path} holds no prompts")
    return tuple(prompts)


@dataclass(frozen=True)
class Completion:
    """One streamed completion as the client saw it."""

    variant: str | None
    """The arm that served it (``X-Variant``, else the chunks' ``variant``); None when nothing named one."""
    record: StreamRecord | None
    """Its timing (``time.perf_counter()`` seconds) and output tokens; None when it failed."""
    problem: str | None
    """Why it failed; None when it completed."""
    started_at: float
    """``time.time()`` when it was sent."""
    text: str = ""


def stream_completion(client: httpx.Client, body: dict, headers: dict[str, str]) -> Completion:
    """Stream ``body`` to the end (see the module docstring); never raises for what the server did."""
    started_at, timer = time.time(), StreamTimer()
    variant, usage, text = None, None, []
    try:
        with open_chat(client, body, headers=headers, check=False) as (response, events):
            variant = response.headers.get(HEADER)  # also on an error: the arm that failed
            for event in events:
                timer.chunk(bool(event.content), event.received_s)
                variant = variant or event.variant
                usage = event.usage or usage
                text.append(event.content)
    except (InferenceError, GenerationRejected, httpx.HTTPError, ValueError) as e:
        return Completion(variant, None, f"{type(e).__name__}: {e}", started_at)
    if timer.last_s is None:
        return Completion(variant, None, "the stream ended without a chunk", started_at)
    return Completion(variant, timer.finish((usage or {}).get("completion_tokens")), None, started_at, "".join(text))


def log_line(name: str, completion: Completion) -> dict:
    """The JSON line of one completion: times in seconds after it was sent (``sent`` is epoch seconds)."""
    line = {"name": name, "sent": round(completion.started_at, 6), "ok": completion.problem is None}
    record = completion.record
    if record is not None:
        line |= {"content": [round(t - record.sent_s, 6) for t in record.content_s],
                 "last": round(record.last_s - record.sent_s, 6), "tokens": record.output_tokens}
    return line


@dataclass(frozen=True)
class LoggedStream:
    """One line of a streams log."""

    name: str
    sent: float
    """Epoch seconds."""
    ok: bool
    record: StreamRecord | None
    """Sent at 0: content chunk times and the last chunk's in seconds after it."""


def read_streams(prefix: str | Path) -> list[LoggedStream]:
    """Every streamed completion the Locust processes of one run logged (``PREFIX_streams-*.jsonl``), by send time."""
    prefix = Path(prefix)
    rows = []
    for path in sorted(prefix.parent.glob(f"{prefix.name}{STREAMS_SUFFIX}*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue  # a line cut short when a process was killed
            record = StreamRecord(0.0, tuple(d["content"]), d["last"], d["tokens"]) if "last" in d else None
            rows.append(LoggedStream(d["name"], d["sent"], d["ok"], record))
    return sorted(rows, key=lambda r: r.sent)


class StreamLog(ProcessLog):
    """Each streamed completion of one Locust process, a JSON line: its row, when it was sent, its chunks' times."""

    SUFFIX, EXTENSION = STREAMS_SUFFIX, ".jsonl"

    def record(self, request_type, name, context=None, **_kwargs) -> None:
        completion = (context or {}).get("completion")
        if request_type != CHAT or completion is None or self.file.closed:
            return
        self.file.write(json.dumps(log_line(name, completion)) + "\n")
