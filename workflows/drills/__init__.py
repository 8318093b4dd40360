"""Operational drills under continuous Locust load: a version ramp, a fault, progressive rollouts, drift.

``python -m workflows drill ramp``: publish a new version while v1 serves, load it, ramp its weight
0 -> 10 -> 50 -> 100 % through the router's admin API, unload the old version; report the failed
requests (the target is zero) and P99 per step.

``python -m workflows drill fault``: kill tritonserver, wait, restart it; report how fast the router
answered 503 (or fell back), the slowest request during the outage against the router's timeout, how
long until it served again, and the failed requests; then send a corpus of malformed requests during
load and check each gets a 4xx, the good traffic is unaffected and the router's metrics agree.

``python -m workflows drill rollout-good|rollout-bad|rollout-slow``: the progressive rollout controller
(``python -m serving rollout``) ramps a candidate through the experiment store under load with feedback;
good is promoted to 100 %, bad (a few-steps adapter) and slow (fp32 behind int8, p99 margin 1 ms) are
rolled back (``progressive.py``).

``python -m workflows drill drift``: half of the traffic switches from held-out reviews to news headlines;
each arm's drift gauge must show it within a stated number of requests, and not before (``drift.py``).

``python -m workflows.drills aa``: both arms serve the same version to users that differ (their own texts, a
few heavy users) while a rollout ramps the treatment; the judge must never give a verdict (nor a sample-ratio
mismatch) at any look, and the rollout must complete (``aa.py``).

All write ``reports/DRILL-TIMESTAMP/`` (drill.json, drill.md and the full load-test report inside).
"""

from workflows.drills.common import DrillConfig
from workflows.drills.fault import fault_drill
from workflows.drills.ramp import ramp_drill

__all__ = ["DrillConfig", "fault_drill", "ramp_drill"]
