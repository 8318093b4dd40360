"""Triton's server-side view of a load test: its Prometheus counters scraped before and after, per model version.

Triton's ``nv_inference_*`` metrics are cumulative counters labelled ``model`` and ``version``; the
difference between two scrapes divided by the successful requests in between gives the mean queue time
and compute time per request during the test, and inferences / executions the mean batch size the
dynamic batcher formed.
"""

from __future__ import annotations

import logging

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_request_failure": "failures",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
Snapshot = dict[tuple[str, str], dict[str, float]]
"""(model, version) -> counter name (the values of COUNTERS) -> cumulative value."""


def parse_metrics(text: str) -> Snapshot:
    """Prometheus text exposition -> the counters of COUNTERS per (model, version)."""
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # prometheus_client strips "_total" from counter family names but not from samples
            name = sample.name.removesuffix("_total")
            key = COUNTERS.get(name) or COUNTERS.get(sample.name)
            if key is None or "model" not in sample.labels:
                continue
            values = snapshot.setdefault((sample.labels["model"], sample.labels.get("version", "")), {})
            values[key] = values.get(key, 0.0) + float(sample.value)  # failures: summed over "reason"
    return snapshot


def scrape(url: str, timeout: float = 5.0) -> Snapshot:
    """Fetch and parse Triton's metrics; raises ``httpx.HTTPError`` when the endpoint cannot be read."""
    response = httpx.get(url, timeout=timeout, trust_env=False).raise_for_status()
    return parse_metrics(response.content.decode("utf-8", errors="replace"))


def try_scrape(url: str | None) -> tuple[Snapshot | None, str | None]:
    """(snapshot, None), or (None, why not) when ``url`` is None or unreachable."""
    if not url:
        return None, "Triton metrics scraping is switched off"
    try:
        return scrape(url), None
    except (httpx.HTTPError, ValueError) as e:
        log.warning("cannot read Triton metrics at %s: %s", url, e)
        return None, f"cannot read Triton metrics at {url}: {e}"


def deltas(before: Snapshot, after: Snapshot) -> list[dict]:
    """Per model version that served requests in between: counts and mean times per request (ms)."""
    rows = []
    for (model, version), values in sorted(after.items()):
        old = before.get((model, version), {})
        d = {k: values.get(k, 0.0) - old.get(k, 0.0) for k in COUNTERS.values()}
        if d["requests"] <= 0 and d["failures"] <= 0:
            continue
        per_request = max(d["requests"], 1.0)
        rows.append({
            "model": model,
            "version": version,
            "requests": int(d["requests"]),
            "failures": int(d["failures"]),
            "mean_batch_size": d["inferences"] / d["executions"] if d["executions"] else None,
            "request_ms": d["request_us"] / per_request / 1000,
            "queue_ms": d["queue_us"] / per_request / 1000,
            "compute_input_ms": d["compute_input_us"] / per_request / 1000,
            "compute_infer_ms": d["compute_infer_us"] / per_request / 1000,
            "compute_output_ms": d["compute_output_us"] / per_request / 1000,
        })
    return rows
