"""The store as one router uses it: opened at start-up, followed while running, flushed at shutdown.

``StoreRuntime`` ties the pieces to the router's state: ``reconcile`` picks the experiment to run (and
its revision, the period requests are recorded in), the ``BatchWriter`` takes the recorder's rows and the
drift feed's samples off the request path, ``follow`` applies other replicas' revisions, the sweep
(``StoreSweep``) removes what aged out (feedback whose answer never came, kept inputs past their retention,
looks of the judge its history no longer needs), and the admin API's weight changes, reloads, feedback and
reports go through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from experiments.drift.monitor import FeatureDrift, drift_report
from experiments.judge import JudgeConfig, UnitTable
from experiments.retention import LookRetention, RetainInputs, read_look_retention, read_retention
from experiments.spec import Experiment
from experiments.store import open_store
from experiments.store.base import DuplicateFeedback, Revision, StoreUnavailable, audit_entry
from experiments.store.sync import experiment_of, follow, reconcile, spec_of
from experiments.store.unit_table import table_for
from experiments.store.writer import BatchWriter
from serving.router.config import RouterConfig
from serving.router.errors import BadRequest, Conflict, RouterError
from serving.router.input_keeper import InputKeeper
from serving.router.record_sink import RecordSink
from serving.router.store_sweep import StoreSweep

if TYPE_CHECKING:
    from serving.router.state import RouterState

log = logging.getLogger(__name__)


class StoreDown(RouterError):
    """The experiment store cannot be reached for a change that must be shared (503)."""

    status_code = 503


class StoreRuntime:
    """One router's connection to the experiment store (``RouterConfig.store``)."""

    def __init__(self, config: RouterConfig):
        assert config.store, "StoreRuntime needs a store URL"
        self.config = config
        self.store = open_store(config.store)
        self.revision = 0
        self.writer: BatchWriter | None = None
        self._state: RouterState | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self, state: RouterState) -> None:
        """Open the store, settle which revision to run, start the writer and the follower."""
        self._state = state
        await self.store.open()
        exp, rev = await reconcile(self.store, state.experiment, self.config.triton_url, self.config.experiment)
        self.revision = rev.revision
        state.set_experiment(exp, f"store revision {rev.revision}", period=rev.revision)
        rec, name = state.recorder, exp.name
        self.writer = BatchWriter(self.store, self.config.store_flush_interval_s,
                                  max_buffered=self.config.store_buffer,
                                  on_drop=lambda n: rec.metrics.store_dropped.labels(name).inc(n),
                                  on_store_up=lambda up: rec.metrics.store_up.labels(name).set(int(up)))
        rec.metrics.store_up.labels(name).set(1)
        rec.metrics.store_buffered.labels(name).set_function(lambda: self.writer.buffered if self.writer else 0)
        rec.sink = RecordSink(self.writer, lambda: state.experiment)
        if state.drift is not None:
            state.drift.sink = self.writer.put_all
        self.writer.start()
        loop = asyncio.get_running_loop()
        file = self.config.experiment
        policy = read_retention(file) if file else RetainInputs()
        sweep = StoreSweep(self.store, name, self.config.feedback_pending_s, policy,
                           read_look_retention(file) if file else LookRetention(),
                           lambda n: state.recorder.count_expired_feedback(n))
        self._tasks = [loop.create_task(follow(self, name, self.config.store_poll_s), name="store-follower"),
                       loop.create_task(sweep.run(), name="store-sweep")]
        if policy.enabled:
            state.inputs = InputKeeper(name, policy, self.writer.put_all, rec.registry)
            self._tasks.append(loop.create_task(state.inputs.run(), name="input-keeper"))
            log.info("keeping the input texts of %.0f %% of answers for %.0f s (retain_inputs)", policy.fraction * 100,
                     policy.retention_s)
        log.info("experiment store %s: revision %d, flush every %.2f s, buffer %d records", self.store.url.split("@")[-1],
                 rev.revision, self.config.store_flush_interval_s, self.config.store_buffer)

    async def stop(self) -> None:
        """Stop following, flush the buffered rows (a graceful stop loses nothing), close the store."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._state is not None and self._state.inputs is not None:
            await self._state.inputs.flush()  # the last sampled inputs reach the writer before it stops
        if self.writer is not None:
            await self.writer.stop()
        await self.store.close()

    def apply_revision(self, rev: Revision) -> None:
        """A revision another replica (or this one) stored: run it."""
        assert self._state is not None
        exp = experiment_of(rev, self.config.triton_url)
        self._state.set_experiment(exp, f"store revision {rev.revision}, {rev.source} by {rev.who}: {rev.why}",
                                   period=rev.revision)
        self.revision = rev.revision

    async def change(self, exp: Experiment, source: str, who: str, why: str) -> Revision:
        """Store ``exp`` as the next revision, then run it; every replica follows within ``store_poll_s``."""
        assert self._state is not None
        if exp.name != self._state.experiment.name:
            raise BadRequest(f"the new spec names experiment {exp.name!r} but this router runs "
                             f"{self._state.experiment.name!r}; start a new router for a new experiment")
        try:
            rev = await self.store.add_revision(exp.name, spec_of(exp), source, who, why)
        except StoreUnavailable as e:
            raise StoreDown(f"the experiment store is unavailable, so the change was not made: {e}") from None
        self.apply_revision(rev)
        return rev

    async def feedback(self, request_id: str, labels: tuple[str, ...]) -> tuple[str, bool] | None:
        """Feedback for an answer of any replica: (arm, correct) when its answer is in the store, None when it
        is kept pending until the answer arrives (``Store.add_feedback``). An answer this replica served is
        flushed to the store first, so its feedback joins at once."""
        assert self._state is not None and self.writer is not None
        name, recorder = self._state.experiment.name, self._state.recorder
        try:
            if recorder.lookup(request_id) is not None:
                await self.writer.flush()
            found = await self.store.add_feedback(name, request_id, labels)
        except DuplicateFeedback:
            raise Conflict(f"request {request_id!r} already has feedback") from None
        except StoreUnavailable as e:
            raise StoreDown(f"the experiment store is unavailable, feedback not recorded; retry later: {e}") from None
        if found is None:
            recorder.count_pending_feedback()
        else:
            recorder.count_feedback(*found)
        return found

    async def quality(self, request_id: str, score: float | None, reference: str | None = None
                      ) -> tuple[str, float] | None:
        """Quality feedback on a generative answer of any replica, a ``score`` or a ``reference`` text to score its
        answer against: (arm, score) when the answer is in the store, None when the feedback is kept pending until
        it arrives (``Store.add_quality``); an answer this replica served is flushed to the store first."""
        assert self._state is not None and self.writer is not None
        name, recorder = self._state.experiment.name, self._state.recorder
        try:
            if recorder.lookup(request_id) is not None:
                await self.writer.flush()
            found = await self.store.add_quality(name, request_id, score, reference)
        except DuplicateFeedback:
            raise Conflict(f"request {request_id!r} already has feedback") from None
        except StoreUnavailable as e:
            raise StoreDown(f"the experiment store is unavailable, feedback not recorded; retry later: {e}") from None
        if found is None:
            recorder.count_pending_feedback()
        else:
            recorder.count_quality(*found)
        return found

    async def answer_text(self, request_id: str) -> str | None:
        """A generative answer's text kept in the store (any replica's), or None."""
        assert self._state is not None
        try:
            return await self.store.answer_text(self._state.experiment.name, request_id)
        except StoreUnavailable as e:
            raise StoreDown(f"the experiment store is unavailable, feedback not recorded; retry later: {e}") from None

    async def snapshot(self) -> dict[str, dict]:
        """The report's per-arm data over every replica's traffic (raises ``StoreUnavailable``)."""
        assert self._state is not None
        return await self.store.snapshot(self._state.experiment.name, self.config.latency_window)

    async def unit_table(self, config: JudgeConfig) -> UnitTable:
        """The judge's unit table over every replica's traffic, its tail threshold by ``config`` (raises
        ``StoreUnavailable``)."""
        assert self._state is not None
        exp = self._state.experiment
        return await table_for(self.store, exp.name, exp.arm_names, config)

    async def drift(self) -> Callable[[], dict[str, dict[str, FeatureDrift]]] | None:
        """The drift every replica monitored, from the store: a function that compares each arm's window
        with its reference (CPU work, for a worker thread); None when no replica monitored drift."""
        assert self._state is not None
        windows = await self.store.drift_windows(self._state.experiment.name)
        return None if windows is None else (lambda: drift_report(windows))

    async def audit(self, limit: int = 50) -> list[dict]:
        """The newest revisions, oldest first, as JSON-able dicts (the audit log)."""
        assert self._state is not None
        return [audit_entry(r) for r in await self.store.revisions(self._state.experiment.name, limit)]
