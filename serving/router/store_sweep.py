"""The router's sweep of the experiment store: what ages out is removed, a few times a minute at most.

One pass (``StoreSweep.once``) expires the feedback pending longer than ``RouterConfig.feedback_pending_s``
(counted in the report and ``router_feedback_expired``), deletes the kept input texts older than
``retain_inputs.retention_s`` (when inputs are kept) and thins the judge's history of looks by
``look_retention`` (``experiments.store.looks.thin_looks``). ``run`` makes a pass at once, then one every
``interval_s``: a quarter of the shortest period it enforces, at most 30 s. Every replica sweeps; the deletes
are idempotent, so replicas need no coordination. A store outage only skips a pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from experiments.retention import LookRetention, RetainInputs
from experiments.store import Store, StoreUnavailable
from experiments.store.looks import thin_looks
from experiments.store.loop_tables import delete_inputs

log = logging.getLogger(__name__)

MAX_INTERVAL_S = 30.0
"""The longest wait between two passes."""


@dataclass(frozen=True)
class Swept:
    """What one pass removed."""

    feedback: int = 0
    """Pending feedback expired (its answer never reached the store)."""
    inputs: int = 0
    """Kept input texts deleted after their retention."""
    looks: int = 0
    """Looks of the judge thinned out of the history."""


class StoreSweep:
    """Sweeps one experiment's aged rows out of ``store`` (``run`` until cancelled)."""

    def __init__(self, store: Store, experiment: str, feedback_pending_s: float, inputs: RetainInputs,
                 looks: LookRetention, on_expired: Callable[[int], None] = lambda n: None):
        self.store, self.experiment = store, experiment
        self.feedback_pending_s, self.inputs, self.looks = feedback_pending_s, inputs, looks
        self.on_expired = on_expired
        """Called with the number of feedbacks a pass expired (when any): the router counts them."""
        periods = [feedback_pending_s, *([inputs.retention_s] if inputs.enabled else []),
                   *([looks.every_look_s] if looks.every_look_s > 0 else [])]
        self.interval_s = min(MAX_INTERVAL_S, min(periods) / 4)
        """Seconds between passes."""

    async def once(self, now: float | None = None) -> Swept:
        """One pass at ``now`` (Unix time; the clock's when None)."""
        now = time.time() if now is None else now
        swept = Swept(
            feedback=await self.store.expire_feedback(self.experiment, now - self.feedback_pending_s),
            inputs=await delete_inputs(self.store, self.experiment, now - self.inputs.retention_s)
            if self.inputs.enabled else 0,
            looks=await thin_looks(self.store, self.experiment, self.looks, now))
        if swept.feedback:
            self.on_expired(swept.feedback)
            log.warning("%d feedback(s) expired: no answer with their request id reached the store in %.0f s",
                        swept.feedback, self.feedback_pending_s)
        if swept.inputs:
            log.info("deleted %d kept input(s) older than %.0f s", swept.inputs, self.inputs.retention_s)
        if swept.looks:
            log.info("thinned %d look(s) out of the judge's history", swept.looks)
        return swept

    async def run(self) -> None:
        """Until cancelled: a pass now, then one every ``interval_s``."""
        while True:
            try:
                await self.once()
            except StoreUnavailable as e:
                log.debug("store sweep skipped, the store is unavailable: %s", e)
            await asyncio.sleep(self.interval_s)
