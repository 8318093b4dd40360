"""The KServe v2 JSON the load test sends, and what counts as a valid prediction in the answer.

Kept apart from the locustfile, which imports Locust (and with it gevent's monkey-patching), so the
checks can be used and tested in any process.
"""

from __future__ import annotations

import math

from export.contract import CONTRACT


def infer_body(texts: list[str]) -> dict:
    """A KServe v2 JSON request for ``texts``, asking for JSON (not binary) outputs."""
    outputs = [CONTRACT.output_probabilities, CONTRACT.output_label]
    return {
        "inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}],
        "outputs": [{"name": n, "parameters": {"binary_data": False}} for n in outputs],
    }


def check_prediction(payload: dict, count: int, label_set: frozenset[str]) -> str | None:
    """None if ``payload`` is a valid prediction for ``count`` texts, else what is wrong with it."""
    outputs = {o.get("name"): o for o in payload.get("outputs", []) if isinstance(o, dict)}
    missing = [n for n in (CONTRACT.output_probabilities, CONTRACT.output_label) if n not in outputs]
    if missing:
        return f"answer lacks output(s) {missing}; got {sorted(map(str, outputs))}"
    probs = outputs[CONTRACT.output_probabilities].get("data") or []
    labels = outputs[CONTRACT.output_label].get("data") or []
    if len(labels) != count or not probs or len(probs) % count:
        return f"expected {count} label(s) and probability rows, got {len(labels)} labels and {len(probs)} values"
    width = len(probs) // count
    for i in range(count):
        row = probs[i * width:(i + 1) * width]
        if not all(isinstance(p, int | float) and math.isfinite(p) and 0 <= p <= 1 for p in row):
            return f"probability row {i} is not in [0, 1]: {row}"
        if abs(sum(row) - 1) > 1e-3:
            return f"probability row {i} sums to {sum(row):.4f}, not 1"
    unknown = [x for x in labels if not isinstance(x, str) or (label_set and x not in label_set)]
    if unknown:
        return f"unknown label(s) {unknown[:3]}; expected one of {sorted(label_set)}"
    return None
