"""The drift monitor's data in the store: each arm's newest monitored texts and the reference they are
compared with, so a report from the store (any replica's, or ``python -m serving report --store``) shows the
drift the routers monitored, with no model repository at hand.

The drift feed (``serving.router.drift_feed``) sends one ``DriftSample`` per monitored text and the
``DriftReferenceRow`` of each (model, version) it monitors; each batch keeps the newest ``window`` samples
per arm (``batch.py``). An arm is compared with the reference of the (model, version) that served its
newest sample, on the samples of that source only: a new version starts a fresh window, as in memory.
The comparison itself is ``experiments.drift.monitor.drift_report``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

from experiments.drift.monitor import DriftWindow

if TYPE_CHECKING:
    from experiments.store.base import Store

_NEWEST_SOURCE = ("SELECT arm, model, version FROM drift_samples WHERE id IN "
                  "(SELECT MAX(id) FROM drift_samples WHERE experiment = ? GROUP BY arm)")
_SAMPLES = ("SELECT text_length, unknown_token_rate, confidence, label FROM drift_samples "
            "WHERE experiment = ? AND arm = ? AND model = ? AND version = ? ORDER BY id")
_REFERENCES = "SELECT model, version, reference FROM drift_references WHERE experiment = ?"


async def read_drift_windows(store: Store, experiment: str) -> dict[str, DriftWindow] | None:
    """Per arm with monitored texts, its window; None when the store has no reference for ``experiment``
    (its routers monitored no drift)."""
    references = {(m, v): ref for m, v, ref in await store._query(_REFERENCES, [experiment])}
    if not references:
        return None
    out: dict[str, DriftWindow] = {}
    for arm, model, version in sorted(await store._query(_NEWEST_SOURCE, [experiment])):
        reference = references.get((model, version))
        if reference is None:
            continue
        rows = await store._query(_SAMPLES, [experiment, arm, model, version])
        live = {"text_length": [float(r[0]) for r in rows], "unknown_token_rate": [float(r[1]) for r in rows],
                "confidence": [float(r[2]) for r in rows if r[2] is not None]}
        out[arm] = DriftWindow(model, version, json.loads(reference), live,
                               Counter(r[3] for r in rows if r[3] is not None))
    return out
