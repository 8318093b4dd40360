"""What the HTTP and gRPC flood tests share: the stack they flood, the router's error counters, the share check.

The stack: tritonserver on the tiny model (versions 1 and 2) and the router as a subprocess on a 70/30
experiment with no sticky key (every request drawn at random) and a fallback arm.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
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

MODEL = CONTRACT.default_model_name
SHARES = {"control": 0.7, "treatment": 0.3}
FLOOD_RATE = 60.0
"""Malformed requests per second the flooding client aims at."""
MIN_RATE = 50.0
"""Malformed requests per second the flood must reach to count as a flood."""


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


def router_counters(url: str) -> dict[str, float]:
    """Client errors, server errors and fallbacks from the router's /metrics, over all arms."""
    out = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text):
        for sample in family.samples:
            if sample.name == "router_errors_total":
                out[f"{sample.labels['kind']}_{sample.labels['code']}"] += sample.value
            elif sample.name == "router_fallbacks_total":
                out["fallbacks"] += sample.value
    return dict(out)


def counters_moved(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """The counters that changed between two ``router_counters`` readings, and by how much."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()}
    return {k: v for k, v in delta.items() if v}


def assert_shares(served: Mapping[str, int]) -> None:
    """At least 100 requests served, on exactly the arms of ``SHARES``, the treatment's share within 4.5
    standard errors of its weight (~1e-5 false alarms)."""
    n = sum(served.values())
    assert set(served) == set(SHARES) and n >= 100, served
    p = SHARES["treatment"]
    assert abs(served["treatment"] / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n), served
