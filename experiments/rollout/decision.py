"""One look at the judge's verdicts -> one decision: halt, roll back, promote, hold, or wait.

The rules, in order (``decide``):

1. **halt** when the judge finds a sample-ratio mismatch: the split of users or requests does not match the
   weights, so no other verdict can be trusted -- neither a promotion nor a rollback. The weights stay where
   they are and a person decides;
2. **rollback** at once when any watched metric (the guardrails, and accuracy from feedback) is "worse",
   or the predicted-label mix is "different" while it is a guardrail;
3. **promote** when every guardrail is "equivalent within margin" or "better", every success metric (if
   any) is "better" now or was at an earlier look of this rollout (``found_better``), and the step has served
   at least ``min_step_requests`` new treatment requests. An earlier "better" stands: the judge's intervals
   are anytime-valid, so the chance that *any* look ever reads "better" without a real gain is the false-verdict
   rate measured for reading at every look; a later look that slips back to "no decision yet" (more data at a
   step where the control gets none, such as 100 %) does not undo it, while a "worse" still rolls back;
4. **hold** or **rollback** (``on_timeout``) when the step has been undecided for ``step_timeout_s``;
5. otherwise **wait** and look again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from experiments.judge.metrics import MISMATCH
from experiments.rollout.config import RolloutConfig

PROMOTE, ROLLBACK, HOLD, HALT, WAIT = "promote", "rollback", "hold", "halt", "wait"
GOOD = ("equivalent within margin", "better")
"""Verdicts that let a guardrail pass."""
BAD = ("worse", "different")
"""Verdicts that roll back ("different": the label mix moved, which has no direction but is a quality alarm)."""


@dataclass(frozen=True)
class Decision:
    """What to do after one look, why, and the verdicts it was based on."""

    action: str
    """halt, rollback, promote, hold or wait."""
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


def mismatch_evidence(sample_ratio: dict[str, Any]) -> str:
    """``sample ratio mismatch: control 52.1 % of new users (expected 75.0 %), ...`` for the audit log."""
    units = ", ".join(f"{a} {100 * u['observed_share']:.1f} % of new users (expected {100 * u['expected_share']:.1f} %)"
                      for a, u in sample_ratio["units"].items())
    requests = ", ".join(f"{a} {100 * r['observed_share']:.1f} % of requests (expected {100 * r['expected_share']:.1f} %)"
                         for a, r in sample_ratio["requests"].items())
    return (f"sample ratio mismatch: {units}; {requests}; users' e-value {sample_ratio['units_evalue']:.3g} "
            f"(threshold {sample_ratio['units_threshold']:.3g}): the split does not match the weights, so no verdict "
            "can be trusted; weights kept, a person decides")


def decide(metrics: dict[str, Any], cfg: RolloutConfig, new_requests: int, elapsed_s: float,
           sample_ratio: dict[str, Any] | None = None, found_better: frozenset[str] = frozenset()) -> Decision:
    """The decision for a step that has served ``new_requests`` treatment requests in ``elapsed_s`` seconds, from
    the treatment's ``metrics``, the experiment's ``sample_ratio`` (``Verdicts.to_dict()``'s) and the success
    metrics found "better" at an earlier look of the rollout (``found_better``)."""
    if sample_ratio is not None and sample_ratio["verdict"] == MISMATCH:
        return Decision(HALT, mismatch_evidence(sample_ratio), ("sample_ratio",), metrics)
    watched = cfg.watched
    bad = tuple(n for n in watched if metrics.get(n, {}).get("verdict") in BAD
                and (n in cfg.guardrails or metrics[n]["verdict"] == "worse"))
    if bad:
        return Decision(ROLLBACK, evidence(metrics, bad), bad, metrics)
    pending = tuple(n for n in cfg.guardrails if metrics.get(n, {}).get("verdict") not in GOOD) \
        + tuple(n for n in cfg.success_metrics if metrics.get(n, {}).get("verdict") != "better"
                and n not in found_better)
    if not pending and new_requests >= cfg.min_step_requests:
        earlier = [n for n in cfg.success_metrics if metrics.get(n, {}).get("verdict") != "better"]
        note = "".join(f"; {n} found better at an earlier look" for n in earlier)
        return Decision(PROMOTE, evidence(metrics, watched) + note, (), metrics)
    if elapsed_s >= cfg.step_timeout_s:
        waiting = (f"undecided after {elapsed_s:.0f} s (timeout {cfg.step_timeout_s:g} s, {new_requests} new "
                   f"treatment requests, {cfg.min_step_requests} needed): ")
        action = HOLD if cfg.on_timeout == "hold" else ROLLBACK
        return Decision(action, waiting + evidence(metrics, pending or watched), pending, metrics)
    return Decision(WAIT, evidence(metrics, pending or watched), pending, metrics)
