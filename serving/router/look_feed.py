"""The router's part of the judge's history of looks (``experiments.judge.looks``): a background task that,
every ``RouterConfig.look_interval_s`` while traffic flows, judges the same unit table the report judges and
appends the look to the store's ``judge_looks`` (every replica's looks in one place) or, without a store, to a
ring in memory.

Its cost stays off the request path: it runs on the event loop only to read the table and write one row, the
judge itself in a worker thread, once per interval, and not at all while this replica counts nothing new.
With a store a replica skips its turn when another replica stored a look less than half an interval ago, so
a fleet stores about one look per interval (a duplicate now and then is harmless). A store outage only
skips looks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from experiments.judge import JudgeConfig, judge
from experiments.judge.looks import LookRing, look_of
from experiments.store import StoreUnavailable

if TYPE_CHECKING:
    from serving.router.state import RouterState

log = logging.getLogger(__name__)


class LookFeed:
    """Takes the judge's looks for one router (``run`` until cancelled) and answers ``looks()``."""

    def __init__(self, state: RouterState, interval_s: float, ring_size: int, config: JudgeConfig | None = None):
        self.state, self.interval_s = state, interval_s
        self.config = config or JudgeConfig()
        """The judge's settings: the report's defaults, so a look and the report's verdicts agree."""
        self.ring = LookRing(ring_size)
        self._seen = -1

    async def run(self) -> None:
        """Until cancelled: a look per interval while this replica counts new traffic."""
        while True:
            await asyncio.sleep(self.interval_s)
            activity = self.state.recorder.activity()
            if activity == self._seen:
                continue
            try:
                if await self.look_once():
                    self._seen = activity
            except StoreUnavailable as e:
                log.debug("look skipped, the store is unavailable: %s", e)
            except Exception:
                log.exception("the judge's look failed; the next interval tries again")

    async def look_once(self) -> bool:
        """Judge now and keep the look; False when there is nothing to judge yet or another replica just looked."""
        state, now = self.state, time.time()
        name = state.experiment.name
        if state.store is not None:
            newest = await state.store.store.newest_look_at(name)
            if newest is not None and now - newest < self.interval_s / 2:
                return False
            table = await state.store.unit_table(self.config)
        else:
            table = state.recorder.unit_table()
        if table is None:
            return False
        verdicts = await asyncio.to_thread(lambda: judge(table, self.config).to_dict())
        look = look_of(verdicts, time.time(), state.period)
        if state.store is not None:
            await state.store.store.append_look(name, look)
        else:
            self.ring.append(look)
        return True

    async def looks(self, limit: int = 5000) -> list[dict[str, Any]]:
        """The history, oldest first: the store's (every replica's looks), or this replica's ring."""
        if self.state.store is not None:
            return await self.state.store.store.looks(self.state.experiment.name, limit)
        return self.ring.looks()
