"""The router's own work per HTTP request, without the network: its ASGI app, a canned Triton answer.

    python -m serving.handler_bench                          # this checkout
    python -m serving.handler_bench --compare-tree ../before # and another checkout, alternating

``serving.router_bench`` measures what a caller sees (the hop, Triton, the machine's noise all in it);
this measures the one part a change to the router moves: the ``POST /v2/models/NAME/infer`` path of
the router's app (parse, validate, assign, forward, tag the answer, record it) called directly, its
upstream a pool that answers at once with a recorded Triton answer. Each request is timed twice over:

- back to back, as a loop that never waits: the code's cost with every cache warm;
- after an idle gap (``--gap-ms``, 5 by default: about one Triton inference), as in a real router that
  sleeps while Triton works. On a machine whose idle cores slow down (virtual machines, power saving)
  the same code takes several times longer right after a wait; that, not the back-to-back figure, is
  what a router request costs on it.

Every tree runs in its own process, the trees alternate over ``--rounds``; prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from serving.router.process import ROOT


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


async def measure(requests: int, gap_s: float, warmup: int = 300) -> dict:
    """Per-request microseconds of the router app's infer path: ``requests`` after ``warmup``, ``gap_s`` idle
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
    x = np.array(times[warmup:]) * 1e6
    return {"requests": requests, "gap_ms": gap_s * 1000, "p50_us": round(float(np.median(x)), 1),
            "mean_us": round(float(x.mean()), 1)}


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


def run_tree(tree: Path, requests: int, gaps: list[float]) -> list[dict]:
    """``measure`` for each gap in a fresh process that imports the router from ``tree``."""
    code = (f"import sys, json, importlib.util; sys.path.insert(0, {str(tree)!r})\n"  # the router comes from tree
            f"spec = importlib.util.spec_from_file_location('handler_bench', {__file__!r})\n"  # this bench from here
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)\nimport uvloop\n"
            "import serving.router.app as app\n"  # not the installed package's, when tree has none
            f"assert app.__file__.startswith({str(tree)!r}), 'no router in this tree: ' + app.__file__\n"
            f"print(json.dumps([uvloop.run(bench.measure({requests}, g)) for g in {gaps!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tree, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"handler bench in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.handler_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="timed requests per tree, gap and round")
    p.add_argument("--gap-ms", type=float, default=5.0, help="idle time before each request of the second run")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the trees alternate within each")
    p.add_argument("--compare-tree", default=None, help="another checkout (the code before a change)")
    p.add_argument("--out", default="reports/handler_bench.json", help="JSON results")
    args = p.parse_args(argv)
    trees = [ROOT] + ([Path(args.compare_tree).resolve()] if args.compare_tree else [])
    gaps = [0.0, args.gap_ms / 1000]
    rows: dict[str, list[list[dict]]] = {str(t): [] for t in trees}
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            rows[str(tree)].append(run_tree(tree, args.requests, gaps))
    result = {"what": "router app, POST infer, canned upstream; microseconds per request (median of the rounds)",
              "trees": {t: [{"gap_ms": g * 1000, "p50_us": float(np.median([run[i]["p50_us"] for run in runs])),
                             "rounds_p50_us": [run[i]["p50_us"] for run in runs]} for i, g in enumerate(gaps)]
                        for t, runs in rows.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| tree | back to back: p50 us | after a " f"{args.gap_ms:g} ms idle gap: p50 us |\n|---|---|---|")
    for tree, cells in result["trees"].items():
        print(f"| {Path(tree).name} | {cells[0]['p50_us']} {cells[0]['rounds_p50_us']} | "
              f"{cells[1]['p50_us']} {cells[1]['rounds_p50_us']} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
