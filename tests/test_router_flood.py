"""A flood of malformed requests hurts only its sender (issue #10).

Real processes: tritonserver on the tiny model (two versions), the router as a subprocess on a 70/30
experiment with a fallback arm, and a real headless Locust run of good traffic. While Locust runs, one
client sends at least 50 malformed requests a second (the bodies from the issue: ``"data": null``, a
negative dimension, a number where BYTES text is expected, 100,000 nested ``[``, a blank text the model
itself refuses, an oversize body). Every good request must succeed, the arm shares must stay as set,
no breaker may open (no fallback, no server error), and the router's client-error counters must hold
exactly what the flooding client was answered.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from export.contract import CONTRACT
from loadtests.config import LoadTestConfig
from loadtests.run import run_loadtest
from tests.flood import (
    FLOOD_RATE,
    MIN_RATE,
    SHARES,
    assert_shares,
    counters_moved,
    flood_stack,
    router_counters,
)

pytestmark = pytest.mark.e2e

EXPERIMENT = "flood-ab"


def _text(data, shape=(1, 1), datatype="BYTES") -> bytes:
    return json.dumps({"inputs": [{"name": CONTRACT.input_text, "datatype": datatype, "shape": list(shape),
                                   "data": data}]}).encode()


MALFORMED = {  # name -> (body, the status the router must answer)
    "data null": (_text(None), 400),
    "negative dimension": (_text(["a film"], shape=(-1, 1)), 400),
    "number as text": (_text([5]), 400),
    "nested [": (b"[" * 100_000, 400),
    "blank text (refused by the model)": (_text([" "]), 400),
    "wrong element count": (_text(["a", "b"]), 400),
    "oversize body": (b"x" * (2 << 20), 413),
}


@pytest.fixture(scope="module")
def stack(tiny_onnx_dir, tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("flood")
    texts = next(p for p in (tiny_onnx_dir / "heldout.jsonl", tiny_onnx_dir.parent / "merged" / "heldout.jsonl")
                 if p.is_file())
    with flood_stack(tiny_onnx_dir, tmp, EXPERIMENT) as (triton, router):
        yield {"triton": triton, "router": router, "texts": str(texts), "reports": tmp / "reports"}


class Flood(threading.Thread):
    """One client sending the malformed corpus round-robin at ``rate`` requests/s until stopped."""

    def __init__(self, url: str, rate: float):
        super().__init__(daemon=True)
        self.url, self.interval = url, 1.0 / rate
        self.stop_event = threading.Event()
        self.answers: Counter = Counter()  # (name, status)
        self.unexpected: list[str] = []
        self.elapsed = 0.0

    def run(self) -> None:
        names = list(MALFORMED)
        start = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as client:
            i = 0
            while not self.stop_event.is_set():
                name = names[i % len(names)]
                body, expected = MALFORMED[name]
                try:
                    response = client.post(f"/v2/models/{EXPERIMENT}/infer", content=body)
                    status, error = response.status_code, response.json().get("error")
                except (httpx.HTTPError, ValueError) as e:
                    status, error = -1, f"{type(e).__name__}: {e}"
                self.answers[(name, status)] += 1
                if status != expected or not error:
                    self.unexpected.append(f"{name}: {status} {error!r:.200}")
                i += 1
                self.stop_event.wait(max(0.0, start + i * self.interval - time.monotonic()))
        self.elapsed = time.monotonic() - start

    @property
    def sent(self) -> int:
        return sum(self.answers.values())


def locust_rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "locust_stats.csv", newline="") as f:
        return {r["Name"]: r for r in csv.DictReader(f) if r["Name"] != "Aggregated"}


def test_a_malformed_flood_hurts_only_its_sender(stack):
    router = stack["router"]
    before = router_counters(router.url)
    flood = Flood(router.url, FLOOD_RATE)
    flood.start()
    try:
        result = run_loadtest(LoadTestConfig(
            target="router", host=router.url, experiment=EXPERIMENT, texts=stack["texts"], users=4, run_time="10s",
            feedback_fraction=0.0, triton_metrics_url=stack["triton"].metrics_url, out_dir=str(stack["reports"])))
    finally:
        flood.stop_event.set()
        flood.join(timeout=60)
    assert not flood.is_alive()
    # the flood was a flood, and every malformed request got its 4xx with a JSON error
    assert flood.sent / flood.elapsed >= MIN_RATE, (flood.sent, flood.elapsed)
    assert not flood.unexpected, flood.unexpected[:10]
    # every good request succeeded, on the arms the experiment sets, in its shares
    rows = locust_rows(result.folder)
    assert all(r["Failure Count"] == "0" for r in rows.values()), rows
    assert_shares({arm: int(rows[arm]["Request Count"]) for arm in SHARES})
    # no breaker opened: no fallback, no server error; the client errors are exactly the flood's answers
    moved = counters_moved(before, router_counters(router.url))
    sent_by_code = Counter(f"client_{status}" for (_, status), count in flood.answers.items() for _ in range(count))
    assert moved == dict(sent_by_code), (moved, flood.answers)
    with httpx.Client(base_url=router.url, timeout=10, trust_env=False) as client:
        variants = Counter(client.post(f"/v2/models/{EXPERIMENT}/infer", content=_text(["a warm film"])).headers.get(
            "X-Variant") for _ in range(40))
    assert set(variants) == set(SHARES), variants
