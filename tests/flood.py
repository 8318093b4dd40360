"""What the HTTP and gRPC flood tests share: the stack they flood, the router's counters, the order of events
the flood runs in, the share check.

The stack: tritonserver on the tiny model (versions 1 and 2) and the router as a subprocess on a 70/30
experiment with no sticky key (every request drawn at random) and a fallback arm.

The order (``flood_amid_good_traffic``) is asserted by the router's counters, never by a clock: the flood
starts after the router has answered good requests, sends ``FLOOD_COUNT`` malformed ones, and the router
answers more good requests after the flood's last answer, so the good traffic overlapped the whole flood
however fast or slow the machine is. The flood's achieved rate is printed for the reader, not asserted.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from export.config import ExportConfig
from export.contract import CONTRACT
from export.publish import publish
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack.procs import wait_for

MODEL = CONTRACT.default_model_name
SHARES = {"control": 0.7, "treatment": 0.3}
FLOOD_COUNT = 500
"""Malformed requests the flooding client sends: what 50 a second would send over a 10-second run."""
FLOOD_RATE = 60.0
"""Malformed requests per second the flooding client paces itself at (at most; a slow machine sends slower)."""
GOOD_BEFORE = 20
"""Good requests the router must have answered before the flood's first malformed one."""
GOOD_AFTER = 20
"""Good requests the router must answer after the flood's last answer before the good traffic may stop."""
GOOD_MIN = 100
"""Good requests the router must have answered in all (enough for the share check)."""
STEP_TIMEOUT = 120.0
"""Seconds a step of ``flood_amid_good_traffic`` may wait for its condition before the test fails naming it."""


@contextmanager
def flood_stack(tiny_onnx_dir: Path, tmp: Path, experiment: str, **router_kwargs) -> Iterator[tuple[TritonServer, RouterProcess]]:
    """Triton and a router on the ``experiment`` (``SHARES``, fallback control), its gRPC endpoint forwarding to
    Triton's gRPC port; both stopped on exit.
    ``router_kwargs`` go to ``RouterProcess`` (``extra_args`` after ``--log-level warning``)."""
    cfg = ExportConfig(repository=tmp / "repository", model_name=MODEL, max_batch_size=8, max_queue_delay_us=0)
    publish(tiny_onnx_dir, "fp32", cfg)
    publish(tiny_onnx_dir, "int8", cfg)
    extra_args = ["--log-level", "warning", *router_kwargs.pop("extra_args", ())]
    with TritonServer(cfg.repository, models=[MODEL], startup_timeout=90) as triton:
        (tmp / "experiment.yaml").write_text(yaml.safe_dump({
            "name": experiment, "upstream": triton.http_url, "timeout_s": 5.0, "fallback": "control",
            "arms": [{"name": arm, "model": MODEL, "version": str(v), "weight": round(share * 100)}
                     for v, (arm, share) in enumerate(SHARES.items(), start=1)]}))
        with RouterProcess(tmp / "experiment.yaml", log_file=tmp / "router.log", triton_grpc_url=triton.grpc_url,
                           extra_args=extra_args, **router_kwargs) as router:
            yield triton, router


def _samples(url: str) -> Iterator:
    """Every sample of the router's /metrics."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text):
        yield from family.samples


def router_counters(url: str) -> dict[str, float]:
    """Client errors, server errors and fallbacks from the router's /metrics, over all arms."""
    out = Counter()
    for sample in _samples(url):
        if sample.name == "router_errors_total":
            out[f"{sample.labels['kind']}_{sample.labels['code']}"] += sample.value
        elif sample.name == "router_fallbacks_total":
            out["fallbacks"] += sample.value
    return dict(out)


def router_served(url: str) -> float:
    """Requests the router has answered (``router_requests_total``), over all arms."""
    return sum(s.value for s in _samples(url) if s.name == "router_requests_total")


def flood_amid_good_traffic(url: str, flood: Callable[[], None]) -> None:
    """Run ``flood`` (it sends ``FLOOD_COUNT`` malformed requests and returns once all are answered) while good
    traffic, already started by the caller, runs through the router at ``url``:

    1. wait until the router has answered ``GOOD_BEFORE`` good requests (the good traffic is on);
    2. run the flood to its last answer, and print the rate it reached;
    3. wait until the router has answered ``GOOD_AFTER`` more (the good traffic outlived the flood), and
       ``GOOD_MIN`` since step 1 began.

    The caller stops the good traffic only after this returns. A step whose condition does not come true
    within ``STEP_TIMEOUT`` seconds raises ``TimeoutError`` naming it (the good traffic stopped, say).
    """
    start = router_served(url)
    wait_for(lambda: router_served(url) >= start + GOOD_BEFORE, STEP_TIMEOUT,
             f"{GOOD_BEFORE} good requests answered before the flood")
    began = time.monotonic()
    flood()
    elapsed = time.monotonic() - began
    print(f"flood: {FLOOD_COUNT} malformed requests in {elapsed:.1f} s ({FLOOD_COUNT / elapsed:.0f}/s; "
          f"paced at {FLOOD_RATE:.0f}/s)")
    end = max(router_served(url) + GOOD_AFTER, start + GOOD_MIN)
    wait_for(lambda: router_served(url) >= end, STEP_TIMEOUT,
             f"{GOOD_AFTER} good requests answered after the flood's last ({GOOD_MIN} in all)")


def counters_moved(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """The counters that changed between two ``router_counters`` readings, and by how much."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()}
    return {k: v for k, v in delta.items() if v}


def assert_shares(served: Mapping[str, int]) -> None:
    """At least ``GOOD_MIN`` requests served, on exactly the arms of ``SHARES``, the treatment's share within 4.5
    standard errors of its weight (~1e-5 false alarms)."""
    n = sum(served.values())
    assert set(served) == set(SHARES) and n >= GOOD_MIN, served
    p = SHARES["treatment"]
    assert abs(served["treatment"] / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n), served
