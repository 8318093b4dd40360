"""The router app's ``POST /v2/models/NAME/infer`` path timed in process, its upstream a canned Triton answer.

``serving.handler_bench`` loads this file by its path in one subprocess per checkout it compares, with that
checkout's ``serving`` package first on ``sys.path``: so it imports nothing but what every checkout of the
router has (the router app and config, ``serving.client``), and gives plain lists of milliseconds.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np


def canned() -> tuple[bytes, int, tuple[int, dict[bytes, bytes], bytes], dict]:
    """(request body, its JSON header length, Triton's answer as the pool returns it, model metadata), in the
    binary tensor format ``tritonclient.http`` uses, for the model contract's input and outputs."""
    import orjson
    import tritonclient.http as httpclient

    from export.contract import CONTRACT
    from serving.client import text_input
    from serving.router_bench import TEXT  # router_bench's review, so both benches send the same request

    text = text_input(httpclient, [TEXT])
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True)
               for name in (CONTRACT.output_label, CONTRACT.output_probabilities)]
    body, header_length = httpclient.InferenceServerClient.generate_request_body([text], outputs=outputs)
    label = b"positive"
    label_bytes = len(label).to_bytes(4, "little") + label
    probabilities = np.array([[0.1, 0.9]], dtype=np.float32).tobytes()
    head = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": [
        {"name": CONTRACT.output_label, "datatype": "BYTES", "shape": [1],
         "parameters": {"binary_data_size": len(label_bytes)}},
        {"name": CONTRACT.output_probabilities, "datatype": "FP32", "shape": [1, 2],
         "parameters": {"binary_data_size": len(probabilities)}}]})
    answer = (200, {b"content-type": b"application/octet-stream",
                    b"inference-header-content-length": b"%d" % len(head)}, head + label_bytes + probabilities)
    metadata = {"name": "m", "versions": ["1"], "platform": "python",
                "inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [-1, 1]}],
                "outputs": [{"name": CONTRACT.output_label, "datatype": "BYTES", "shape": [-1]},
                            {"name": CONTRACT.output_probabilities, "datatype": "FP32", "shape": [-1, 2]}]}
    return body, header_length, answer, metadata


class CannedPool:
    """Stands in for the router's ``HttpPool`` to Triton: metadata for GETs, the canned answer for POSTs."""

    closed = False

    def __init__(self, answer: tuple, metadata: dict):
        import orjson

        self.answer, self.metadata = answer, orjson.dumps(metadata)

    async def request(self, method: str, path: str, body: bytes = b"", headers=None, timeout=None):
        return (200, {}, self.metadata) if method == "GET" else self.answer

    async def aclose(self) -> None:
        pass


class Lifespan:
    """Runs an ASGI app's lifespan start-up on enter and its shut-down on exit."""

    def __init__(self, app):
        self.app, self.inbox = app, asyncio.Queue()
        self.started, self.done = asyncio.Event(), asyncio.Event()

    async def _send(self, message: dict) -> None:
        if message["type"].startswith("lifespan.startup"):
            self.started.set()
        elif message["type"].startswith("lifespan.shutdown"):
            self.done.set()

    async def __aenter__(self):
        await self.inbox.put({"type": "lifespan.startup"})
        self.task = asyncio.ensure_future(self.app({"type": "lifespan", "state": {}}, self.inbox.get, self._send))
        await self.started.wait()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.task


async def time_requests(requests: int, gap_s: float, warmup: int = 300) -> list[float]:
    """Milliseconds per request of the router app's infer path: ``requests`` after ``warmup``, ``gap_s`` idle
    before each. Runs the app's lifespan around it; every answer must be a 200 with an arm."""
    from serving.router.app import create_app
    from serving.router.config import RouterConfig, load_experiment, write_experiment

    body, header_length, answer, metadata = canned()
    with tempfile.TemporaryDirectory(prefix="handler-bench-") as tmp:
        path = write_experiment(Path(tmp) / "experiment.yaml", "bench", [("a1", "1", 50), ("a2", "1", 50)], "m",
                                upstream="http://127.0.0.1:9")
        app = create_app(RouterConfig(experiment=str(path), grpc_port=0, store=None), load_experiment(path))
    app.state.router.upstream._pools["http://127.0.0.1:9"] = CannedPool(answer, metadata)
    headers = [(b"host", b"router"), (b"content-type", b"application/octet-stream"),
               (b"inference-header-content-length", b"%d" % header_length), (b"content-length", b"%d" % len(body))]
    scope = {"type": "http", "method": "POST", "path": "/v2/models/bench/infer", "query_string": b"",
             "http_version": "1.1", "scheme": "http", "root_path": "", "server": ("127.0.0.1", 8080),
             "client": ("127.0.0.1", 50000)}
    statuses: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"] if any(k == b"x-variant" for k, _ in message["headers"]) else -1)

    times = []
    async with Lifespan(app):
        for i in range(warmup + requests):
            if gap_s:
                await asyncio.sleep(gap_s)
            request = {**scope, "headers": [*headers, (b"x-user-id", b"user-%d" % i)]}
            start = time.perf_counter()
            await app(request, receive, send)
            times.append(time.perf_counter() - start)
    if set(statuses) != {200}:
        raise RuntimeError(f"the router app answered {sorted(set(statuses))}, not 200 with an arm")
    return [t * 1000 for t in times[warmup:]]
