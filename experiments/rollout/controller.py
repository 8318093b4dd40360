"""The progressive rollout: ramp the treatment's weight through the experiment store, step by step.

Every weight change is a new revision of the experiment in the store (source and who ``rollout``), so
every router replica follows it (``experiments.store.sync``), and the revisions are the audit log.
Each revision's ``why`` starts ``step K/N (P %): ACTION:`` (start, promote, complete, rollback, hold, halt)
followed by the evidence; that prefix is also how a restarted controller finds where it was.

Each look judges the store's unit table (``experiments.judge``): the revisions are its periods, so every ramp
step's arms are compared with each other under the same weights, load and texts, and the steps combined.
A sample-ratio mismatch halts the rollout where it stands (``decision.py``): outcome ``halted``.

* no rollout revision yet, or the last one finished (complete, rollback, hold, halt) and someone changed the
  experiment since: a new rollout starts at the first step;
* the last one is a start or promote and is still the experiment's newest revision: resume at its step
  (the step's clock and its count of new requests run from that revision's time);
* the last one finished and is still the newest: nothing to do (the outcome is reported again);
* someone else changed the experiment during a rollout: stop and say so (a person's change wins).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from experiments.judge import judge
from experiments.rollout.config import RolloutConfig
from experiments.rollout.decision import HALT, HOLD, PROMOTE, ROLLBACK, WAIT, decide
from experiments.spec import Experiment, experiment_from_dict
from experiments.store import Revision, Store, StoreUnavailable
from experiments.store.sync import spec_of
from experiments.store.unit_table import table_for

log = logging.getLogger(__name__)

SOURCE = "rollout"
"""The ``source`` of the revisions this controller writes."""
START, COMPLETE = "start", "complete"
FINISHED = (COMPLETE, ROLLBACK, HOLD, HALT)
RESULTS = {COMPLETE: "complete", ROLLBACK: "rollback", HOLD: "hold", HALT: "halted"}
"""The outcome a finishing action ends the rollout with."""
WHY_RE = re.compile(r"^step (\d+)/(\d+) \(([0-9.]+) %\): (\w+)")


@dataclass
class Look:
    """One look at the evidence: when, at which step, what was decided, the sample-ratio check's verdict and
    each of the treatment's metrics (verdict and interval)."""

    t: float
    step: int
    percent: float
    action: str
    metrics: dict[str, dict[str, Any]]
    sample_ratio: str = ""


@dataclass
class Outcome:
    """How the rollout ended, with what it wrote and the evidence it read."""

    experiment: str
    control: str
    treatment: str
    steps: list[float]
    result: str = ""
    """complete, rollback, hold, halted (a sample-ratio mismatch), or stopped (someone else changed the
    experiment)."""
    step: int = 0
    """The step (1-based) at which it ended."""
    percent: float = 0.0
    reason: str = ""
    started_at: float = 0.0
    decided_in_s: float | None = None
    """Seconds from the start of the final step to the final decision."""
    duration_s: float = 0.0
    """Seconds from the rollout's start to its end (this process's part of it, when resumed)."""
    treatment_requests: int = 0
    """Answers the treatment served since the rollout started (every replica's)."""
    treatment_users: int = 0
    """Distinct sticky keys (users) the treatment served since the rollout started."""
    resumed: bool = False
    revisions: list[int] = field(default_factory=list)
    looks: list[Look] = field(default_factory=list)
    verdicts: dict[str, Any] | None = None
    """The judge's ``Verdicts.to_dict()`` at the last look."""
    found_better: list[str] = field(default_factory=list)
    """Success metrics the judge found "better" at some look of this process's part of the rollout: that stands
    (``experiments.rollout.decision``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_weights(exp: Experiment, treatment: str, percent: float) -> dict[str, float]:
    """Weights giving ``treatment`` ``percent`` % of the traffic; the other arms share the rest as before
    (or evenly when they all stood at 0)."""
    others = {a.name: a.weight for a in exp.arms if a.name != treatment}
    total = sum(others.values())
    rest = 100.0 - percent
    scaled = {n: rest * w / total for n, w in others.items()} if total > 0 else {n: rest / len(others) for n in others}
    return {**{n: round(w, 6) for n, w in scaled.items()}, treatment: percent}


def parse_why(why: str) -> tuple[int, float, str] | None:
    """(step, percent, action) from a rollout revision's ``why``; None for another kind of revision."""
    m = WHY_RE.match(why)
    return (int(m.group(1)), float(m.group(3)), m.group(4)) if m else None


class RolloutController:
    """Ramps ``cfg.treatment`` of the experiment ``name`` in ``store`` through ``cfg.steps``."""

    def __init__(self, store: Store, name: str, cfg: RolloutConfig, who: str = SOURCE):
        self.store, self.name, self.cfg, self.who = store, name, cfg, who
        self.steps = list(cfg.steps)

    async def _experiment(self) -> tuple[Experiment, Revision]:
        latest = await self.store.latest_revision(self.name)
        if latest is None:
            raise LookupError(f"experiment {self.name!r} has no revision in the store {self.store.url}; start a "
                              "router on the experiment file first (it stores the file as revision 1)")
        return experiment_from_dict(latest.spec, f"store revision {latest.revision}"), latest

    async def _write(self, exp: Experiment, out: Outcome, step: int, action: str, reason: str, percent: float) -> Revision:
        """Store the next revision at ``percent`` % for the treatment, why = ``step K/N (P %): ACTION: reason``."""
        new = exp.with_weights(step_weights(exp, out.treatment, percent))
        why = f"step {step}/{len(self.steps)} ({self.steps[step - 1]:g} %): {action}: {reason}"
        rev = await self.store.add_revision(self.name, spec_of(new), SOURCE, self.who, why[:4000])
        out.revisions.append(rev.revision)
        log.info("rollout %s: revision %d: %s", self.name, rev.revision, why[:300])
        return rev

    async def _resume_point(self, out: Outcome) -> tuple[int, float] | None:
        """(step, its start time) to continue from, or None when the rollout already finished or was overridden."""
        revisions = await self.store.revisions(self.name, 1000)
        ours = [(r, parse_why(r.why)) for r in revisions if r.source == SOURCE and parse_why(r.why)]
        if not ours:
            return 0, 0.0
        rev, (step, percent, action) = ours[-1]
        newest = revisions[-1]
        if action in FINISHED:
            if newest.revision != rev.revision:
                return 0, 0.0  # finished, and the experiment changed since: a new rollout
            out.result, out.step, out.percent, out.reason = RESULTS[action], step, percent, rev.why
            return None
        if newest.revision != rev.revision:
            out.result, out.step, out.percent = "stopped", step, percent
            out.reason = (f"revision {newest.revision} by {newest.who} ({newest.source}: {newest.why}) changed the "
                          f"experiment after the rollout's revision {rev.revision}; not overriding it")
            return None
        out.resumed = True
        starts = [r.at for r, (_, _, a) in ours if a == START]
        out.started_at = starts[-1] if starts else rev.at
        log.info("rollout %s: resuming at step %d (%g %%) from revision %d", self.name, step, percent, rev.revision)
        return step, rev.at

    async def _verdicts(self, exp: Experiment) -> dict[str, Any]:
        """The judge's verdicts on the store's unit table now (``Verdicts.to_dict()``), in a worker thread."""
        table = await table_for(self.store, self.name, exp.arm_names, self.cfg.judge)
        return (await asyncio.to_thread(judge, table, self.cfg.judge)).to_dict()

    async def run(self) -> Outcome:
        """Ramp until complete, rolled back, held, halted or stopped; never raises on a store outage (it retries)."""
        exp, _ = await self._experiment()
        treatment = self.cfg.treatment or (exp.arm_names[1] if len(exp.arms) > 1 else "")
        if treatment not in exp.arm_names[1:]:
            raise ValueError(f"rollout treatment {treatment!r} is not a treatment arm of {self.name!r}; expected one "
                             f"of {list(exp.arm_names[1:])} (the first arm, {exp.arm_names[0]!r}, is the control)")
        out = Outcome(self.name, exp.arm_names[0], treatment, self.steps, started_at=time.time())
        point = await self._resume_point(out)
        if point is None:
            log.info("rollout %s: nothing to do: %s at step %d (%s)", self.name, out.result, out.step, out.reason[:200])
            return out
        step, since = point
        if step == 0:
            step, since = 1, (await self._write(exp, out, 1, START, "ramp begins", self.steps[0])).at
        out.started_at = min(out.started_at, since)
        while True:
            try:
                done = await self._look(out, step, since)
            except StoreUnavailable as e:
                log.warning("rollout %s: store unavailable, looking again in %g s: %s", self.name, self.cfg.poll_s, e)
                await asyncio.sleep(self.cfg.poll_s)
                continue
            if done is None:
                await asyncio.sleep(self.cfg.poll_s)
            elif done is True:
                break
            else:
                step, since = done
        out.treatment_requests, out.treatment_users = await self.store.exposure(self.name, treatment, out.started_at)
        out.duration_s = round(time.time() - out.started_at, 1)
        return out

    async def _look(self, out: Outcome, step: int, since: float) -> tuple[int, float] | bool | None:
        """One look: None (wait), True (finished), or the new (step, start time) after a promotion."""
        exp, latest = await self._experiment()
        if latest.source != SOURCE or latest.who != self.who:
            out.result, out.step, out.percent = "stopped", step, self.steps[step - 1]
            out.reason = f"revision {latest.revision} by {latest.who} ({latest.source}: {latest.why}) changed the experiment"
            return True
        out.verdicts = await self._verdicts(exp)
        metrics, sample_ratio = out.verdicts["treatments"][out.treatment]["metrics"], out.verdicts["sample_ratio"]
        new_requests, _ = await self.store.exposure(self.name, out.treatment, since)
        now = time.time()
        out.found_better += [n for n in self.cfg.success_metrics
                             if metrics.get(n, {}).get("verdict") == "better" and n not in out.found_better]
        d = decide(metrics, self.cfg, new_requests, now - since, sample_ratio, frozenset(out.found_better))
        out.looks.append(Look(now, step, self.steps[step - 1], d.action, metrics, sample_ratio["verdict"]))
        if d.action == WAIT:
            return None
        if d.action == PROMOTE and step < len(self.steps):
            rev = await self._write(exp, out, step + 1, PROMOTE, f"from step {step}: {d.reason}", self.steps[step])
            return step + 1, rev.at
        action = COMPLETE if d.action == PROMOTE else d.action
        percent = 0.0 if action == ROLLBACK else self.steps[step - 1]  # a halt or hold keeps the weights
        rev = await self._write(exp, out, step, action, d.reason, percent)
        out.result, out.step, out.percent, out.reason = RESULTS[action], step, percent, d.reason
        out.decided_in_s = round(rev.at - since, 3)
        return True
