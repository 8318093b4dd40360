"""One experiment, many routers: the spec's revisions in the store are the truth every replica follows.

* At start-up (``reconcile``): an experiment file that differs from the last file revision in the store
  is a new revision and wins; otherwise the newest stored revision wins -- so a router restarted after a
  rollback to 0 % comes back at 0 %.
* Afterwards (``follow``): each replica waits for a change (``LISTEN/NOTIFY`` with PostgreSQL, a poll
  of ``poll_s`` with SQLite) and applies a newer revision; while the store is down it keeps its weights.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from experiments.spec import Experiment, experiment_from_dict
from experiments.store.base import Revision, Store, StoreUnavailable

log = logging.getLogger(__name__)

FILE_SOURCE, ADMIN_SOURCE = "file", "admin"


def spec_of(exp: Experiment) -> dict[str, Any]:
    """The experiment as the keys of an experiment file (what a revision stores)."""
    d = exp.to_dict()
    d["arms"] = [{k: v for k, v in a.items() if k != "share"} for a in d["arms"]]
    return {k: v for k, v in d.items() if v is not None}


def experiment_of(rev: Revision, upstream: str | None = None) -> Experiment:
    """The revision's experiment; ``upstream`` (this router's --triton-url) overrides the stored one."""
    spec = {**rev.spec, "upstream": upstream} if upstream else rev.spec
    return experiment_from_dict(spec, f"store revision {rev.revision} of {rev.experiment!r}")


async def reconcile(store: Store, from_file: Experiment, upstream: str | None, source: str) -> tuple[Experiment, Revision]:
    """The experiment to run at start-up, and its revision (see the module docstring)."""
    last_file = await store.latest_revision(from_file.name, source=FILE_SOURCE)
    if last_file is None or last_file.spec != spec_of(from_file):
        why = "first start" if last_file is None else "the experiment file changed"
        rev = await store.add_revision(from_file.name, spec_of(from_file), FILE_SOURCE, f"file {source}", why)
        log.info("experiment %s: revision %d from the file (%s)", from_file.name, rev.revision, why)
        return from_file, rev
    latest = await store.latest_revision(from_file.name)
    assert latest is not None
    log.info("experiment %s: resuming at stored revision %d (%s by %s: %s)", from_file.name, latest.revision,
             latest.source, latest.who, latest.why)
    return experiment_of(latest, upstream), latest


class Follower(Protocol):
    """What ``follow`` needs of the router's state."""

    store: Store | None
    revision: int

    def apply_revision(self, rev: Revision) -> None: ...


async def follow(state: Follower, name: str, poll_s: float) -> None:
    """Apply every newer revision of ``name`` until cancelled; never raises on a store outage."""
    assert state.store is not None
    down = False
    while True:
        await state.store.wait_for_change(name, poll_s)
        try:
            rev = await state.store.latest_revision(name)
        except StoreUnavailable as e:
            if not down:
                log.warning("store unavailable; keeping revision %d's weights until it is back: %s", state.revision, e)
            down = True
            continue
        if down:
            log.info("store back; at revision %s", rev.revision if rev else None)
        down = False
        if rev is not None and rev.revision != state.revision:
            try:
                state.apply_revision(rev)
            except Exception:  # a revision this router cannot run is logged, never crashes the follower
                log.exception("cannot apply revision %d of %s; keeping revision %d", rev.revision, name, state.revision)
