"""What the live page shows, as one JSON document: the report, the spec, the experiment's state, the history
of looks and the drift thresholds.

``page_data`` is the only place the page's figures come from, on the router (``GET /experiments/NAME/data``)
and on ``python -m serving page --store`` alike; the browser draws it and nothing else. Its ``report`` is the
very dict ``GET /v2/experiments/NAME/report`` answers, so every figure on the page is the report's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from experiments.drift.monitor import KS_ALPHA, PSI_THRESHOLD
from experiments.judge.looks import thin
from experiments.rollout.controller import SOURCE as ROLLOUT_SOURCE
from experiments.rollout.controller import parse_why

MOST_LOOKS = 400
"""Looks sent to the page at most (evenly thinned, the first and the newest kept): a poll stays small."""

STATES = {"start": "ramping", "promote": "ramping", "complete": "promoted", "rollback": "rolled back",
          "hold": "held", "halt": "halted on sample-ratio mismatch"}
"""The experiment's state by the action of its newest rollout revision."""


def experiment_state(audit: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The state from the audit log: ``running`` unless the newest revision is the rollout controller's, then
    ``ramping`` (with its step), ``promoted``, ``rolled back``, ``held`` or ``halted on sample-ratio mismatch``;
    a person's change after a rollout makes it ``running`` again. ``why`` is that revision's evidence."""
    newest = (audit or [None])[-1]
    parsed = parse_why(newest["why"]) if newest and newest["source"] == ROLLOUT_SOURCE else None
    if parsed is None:
        return {"state": "running", "step": None, "percent": None, "why": newest["why"] if newest else ""}
    step, percent, action = parsed
    return {"state": STATES.get(action, "running"), "step": step, "percent": percent, "action": action,
            "why": newest["why"]}


def timeline(audit: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The rollout timeline: each revision with its weights, who, when, why, and its rollout action if any."""
    out = []
    for a in audit or []:
        parsed = parse_why(a["why"]) if a["source"] == ROLLOUT_SOURCE else None
        out.append({**a, "action": parsed[2] if parsed else a["source"]})
    return out


def page_data(report: dict[str, Any], spec: dict[str, Any], looks: list[dict[str, Any]],
              token_required: bool = False) -> dict[str, Any]:
    """The page's document from ``report`` (``build_report``'s dict, with ``audit`` when there is a store),
    ``spec`` (``Experiment.to_dict()``) and ``looks`` (the history, oldest first)."""
    return {
        "experiment": report["experiment"],
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "report": report,
        "spec": spec,
        "state": experiment_state(report.get("audit")),
        "timeline": timeline(report.get("audit")),
        "looks": thin(looks, MOST_LOOKS),
        "looks_total": len(looks),
        "drift_thresholds": {"psi": PSI_THRESHOLD, "ks_p_value": KS_ALPHA},
        "token_required": token_required,
    }
