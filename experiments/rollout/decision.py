"""One look at the evidence -> one decision: promote, roll back, hold, or wait.

The rules, in order (``decide``):

1. **rollback** at once when any watched metric (the guardrails, and accuracy from feedback) is "worse",
   or the predicted-label mix is "different" while it is a guardrail;
2. **promote** when every guardrail is "equivalent within margin" or "better" and the step has served at
   least ``min_step_requests`` new treatment requests;
3. **hold** or **rollback** (``on_timeout``) when the step has been undecided for ``step_timeout_s``;
4. otherwise **wait** and look again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from experiments.rollout.config import RolloutConfig

PROMOTE, ROLLBACK, HOLD, WAIT = "promote", "rollback", "hold", "wait"
GOOD = ("equivalent within margin", "better")
"""Verdicts that let a guardrail pass."""
BAD = ("worse", "different")
"""Verdicts that roll back ("different": the label mix moved, which has no direction but is a quality alarm)."""


@dataclass(frozen=True)
class Decision:
    """What to do after one look, why, and the verdicts it was based on."""

    action: str
    """promote, rollback, hold or wait."""
    reason: str
    """The evidence for the audit log: each deciding metric's verdict, interval and samples (no action prefix)."""
    failing: tuple[str, ...] = ()
    """The metrics that rolled back (or that held the step)."""
    verdicts: dict[str, Any] = field(default_factory=dict)
    """The judge's metrics (``MetricResult.to_dict()`` per metric) at this look."""


def evidence(metrics: dict[str, Any], names: tuple[str, ...]) -> str:
    """``error_rate equivalent within margin [-0.004, 0.004]; ...`` for the audit log."""
    parts = []
    for name in names:
        m = metrics.get(name)
        if m is None:
            continue
        low = "-inf" if m.get("low") is None else f"{m['low']:.4g}"
        high = "+inf" if m.get("high") is None else f"{m['high']:.4g}"
        parts.append(f"{name} {m['verdict']} [{low}, {high}]{m.get('unit', '')} (n {m['n_control']}/{m['n_treatment']})")
    return "; ".join(parts)


def decide(metrics: dict[str, Any], cfg: RolloutConfig, new_requests: int, elapsed_s: float) -> Decision:
    """The decision for a step that has served ``new_requests`` treatment requests in ``elapsed_s`` seconds."""
    watched = cfg.watched
    bad = tuple(n for n in watched if metrics.get(n, {}).get("verdict") in BAD
                and (n in cfg.guardrails or metrics[n]["verdict"] == "worse"))
    if bad:
        return Decision(ROLLBACK, evidence(metrics, bad), bad, metrics)
    pending = tuple(n for n in cfg.guardrails if metrics.get(n, {}).get("verdict") not in GOOD)
    if not pending and new_requests >= cfg.min_step_requests:
        return Decision(PROMOTE, evidence(metrics, watched), (), metrics)
    if elapsed_s >= cfg.step_timeout_s:
        waiting = (f"undecided after {elapsed_s:.0f} s (timeout {cfg.step_timeout_s:g} s, {new_requests} new "
                   f"treatment requests, {cfg.min_step_requests} needed): ")
        action = HOLD if cfg.on_timeout == "hold" else ROLLBACK
        return Decision(action, waiting + evidence(metrics, pending or watched), pending, metrics)
    return Decision(WAIT, evidence(metrics, pending or watched), pending, metrics)
