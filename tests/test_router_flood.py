"""A flood of malformed requests hurts only its sender.

Real processes: tritonserver on the tiny model (two versions), the router as a subprocess on a 70/30
experiment with a fallback arm, and a real headless Locust run of good traffic. Once the router has answered
some of it, one client sends ``FLOOD_COUNT`` malformed requests, paced at ``FLOOD_RATE`` a second (the bodies:
``"data": null``, a negative dimension, a number where BYTES text is expected, 100,000 nested
``[``, a blank text the model itself refuses, an oversize body); Locust is stopped only after the router has
answered more good requests after the flood's last (``tests.flood.flood_amid_good_traffic``: an order of
events, not a clock). Every malformed request must get its 4xx with a JSON error, every good request must
succeed, the arm shares must stay as set, no breaker may open (no fallback, no server error), and the router's
client-error counters must hold exactly what the flooding client was answered.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from export.contract import CONTRACT
from loadtests.config import LoadTestConfig
from loadtests.run import PREFIX, run_loadtest
from tests.flood import (
    FLOOD_COUNT,
    FLOOD_RATE,
    SHARES,
    assert_shares,
    counters_moved,
    flood_amid_good_traffic,
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
def stack(tiny_onnx_dir, tiny_heldout, tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("flood")
    texts = tiny_heldout
    with flood_stack(tiny_onnx_dir, tmp, EXPERIMENT) as (triton, router):
        yield {"triton": triton, "router": router, "texts": str(texts), "reports": tmp / "reports"}


class Flood:
    """One client sending the malformed corpus round-robin, ``FLOOD_COUNT`` requests paced at ``rate`` a second,
    each after the answer to the one before."""

    def __init__(self, url: str, rate: float):
        self.url, self.interval = url, 1.0 / rate
        self.answers: Counter = Counter()  # (name, status)
        self.unexpected: list[str] = []

    def run(self) -> None:
        names = list(MALFORMED)
        start = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as client:
            for i in range(FLOOD_COUNT):
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
                time.sleep(max(0.0, start + (i + 1) * self.interval - time.monotonic()))


def locust_entries(folder: Path) -> dict[str, dict]:
    """Locust's final statistics by name (``--json-file``, written when it stops: every request counted)."""
    return {e["name"]: e for e in json.loads((folder / f"{PREFIX}_stats.json").read_text())}


def test_a_malformed_flood_hurts_only_its_sender(stack):
    router = stack["router"]
    before = router_counters(router.url)
    flood, stop = Flood(router.url, FLOOD_RATE), threading.Event()
    cfg = LoadTestConfig(  # run_time only caps the run: Locust is stopped once the flood is over
        target="router", host=router.url, experiment=EXPERIMENT, texts=stack["texts"], users=4, run_time="10m",
        feedback_fraction=0.0, triton_metrics_url=stack["triton"].metrics_url, out_dir=str(stack["reports"]))
    with ThreadPoolExecutor(1) as pool:
        locust = pool.submit(run_loadtest, cfg, stop)
        try:
            flood_amid_good_traffic(router.url, flood.run)
        finally:
            stop.set()
        result = locust.result()
    # every malformed request was answered, with its 4xx and a JSON error
    assert sum(flood.answers.values()) == FLOOD_COUNT, flood.answers
    assert not flood.unexpected, flood.unexpected[:10]
    # every good request succeeded, on the arms the experiment sets, in its shares
    entries = locust_entries(result.folder)
    assert all(e["num_failures"] == 0 for e in entries.values()), entries
    assert_shares({arm: entries[arm]["num_requests"] for arm in SHARES})
    # no breaker opened: no fallback, no server error; the client errors are exactly the flood's answers
    moved = counters_moved(before, router_counters(router.url))
    sent_by_code = Counter(f"client_{status}" for (_, status), count in flood.answers.items() for _ in range(count))
    assert moved == dict(sent_by_code), (moved, flood.answers)
    with httpx.Client(base_url=router.url, timeout=10, trust_env=False) as client:
        variants = Counter(client.post(f"/v2/models/{EXPERIMENT}/infer", content=_text(["a warm film"])).headers.get(
            "X-Variant") for _ in range(40))
    assert set(variants) == set(SHARES), variants
