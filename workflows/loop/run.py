"""``python -m workflows retrain``: run the loop once (a trigger fired, or by hand), or keep watching.

A run takes the loop's lease in the store first (``LoopLog.acquire``): two loops on one store never run two
cycles at once; the lease is renewed while a cycle runs and expires ``lease_s`` after a crash. A holder that
finds its lease taken over (it stalled, or lost the store, for ``lease_s``) stops its cycle at once: it writes
nothing more to the store, and the new holder resumes the cycle from its recorded steps. Holding it, the
run resumes the newest cycle if it has no ``end`` step yet; else it checks the triggers and starts a new cycle
when one fires (``--trigger manual`` always starts one).

Triggers (the ``loop:`` section's ``triggers``):

* ``drift``: the store's drift windows show drift on the production (first) arm
  (``experiments.drift.monitor.drift_report``, the router's thresholds);
* ``new_labels``: at least N kept inputs with feedback answered since the last cycle started;
* ``every_s``: that many seconds since the last cycle started;
* by hand: ``--trigger manual``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field

from experiments.drift.monitor import drift_report
from experiments.rollout.config import RolloutConfig
from experiments.spec import load_experiment
from experiments.store import Store, default_store_url, open_store
from experiments.store.loop_tables import LoopLog, count_labelled
from tunestack.configfile import load_config_file
from workflows.loop.config import LoopConfig, read_loop_config
from workflows.loop.cycle import END, Cycle, LoopContext

log = logging.getLogger(__name__)


@dataclass
class RetrainArgs:
    """``python -m workflows retrain``: the retrain loop of one experiment."""

    experiment: str
    """The experiment file (its ``loop:``, ``rollout:`` and ``retain_inputs:`` sections)."""
    store: str | None = None
    """The store URL; default: $TUNESTACK_ROUTER_STORE, else the file's ``store``, else the SQLite file beside it."""
    trigger: str = ""
    """"manual": start a cycle now, whatever the triggers say; "": only when a trigger fires."""
    watch: bool = False
    """Keep watching: look at the triggers every ``loop.poll_s`` seconds until stopped."""
    triton: str | None = None
    """Triton's HTTP ``host:port``: a published candidate is loaded there (explicit model control)."""
    who: str = field(default_factory=lambda: f"loop@{socket.gethostname()}")
    """Who runs the loop (the audit log's ``who``)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: $MLFLOW_TRACKING_URI, or off)."""


def context(args: RetrainArgs) -> tuple[LoopContext, str]:
    """The loop's context and store URL from the experiment file and the arguments."""
    exp = load_experiment(args.experiment)
    cfg: LoopConfig = read_loop_config(args.experiment)
    rollout = RolloutConfig.from_dict(load_config_file(args.experiment).get("rollout"), f"{args.experiment}: rollout")
    url = args.store or os.environ.get("TUNESTACK_ROUTER_STORE") or exp.store or default_store_url(args.experiment)
    return LoopContext(exp.name, cfg, rollout, args.triton, args.who, args.tracking_uri), url


async def check_triggers(store: Store, ctx: LoopContext, since: float, first_look: float) -> str | None:
    """Why a cycle should start now (the first trigger that fires), or None."""
    t = ctx.cfg.triggers
    if t.drift:
        latest = await store.latest_revision(ctx.experiment)
        production = latest.spec["arms"][0]["name"] if latest else None
        windows = await store.drift_windows(ctx.experiment)
        if windows and production in windows:
            report = await asyncio.to_thread(drift_report, {production: windows[production]})
            drifted = {f: d for f, d in report.get(production, {}).items() if d.drifted}
            if drifted:
                return "drift: " + ", ".join(f"{production} {f} PSI {d.psi:.3f} (n={d.n})" for f, d in drifted.items())
    if t.new_labels is not None:
        n = await count_labelled(store, ctx.experiment, since)
        if n >= t.new_labels:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "the start"
            return f"new_labels: {n} labelled kept inputs since {when} (trigger at {t.new_labels})"
    if t.every_s is not None and time.time() - max(since, first_look) >= t.every_s:
        return f"schedule: {t.every_s:g} s since the last cycle"
    return None


async def _renew(loop_log: LoopLog, holder: str, lease_s: float, cycle: asyncio.Task, lost: asyncio.Event) -> None:
    """Renew the lease every ``lease_s / 3`` seconds; when another holder has taken it (this process stalled or
    lost the store for ``lease_s``), set ``lost`` and cancel ``cycle``: it records nothing more."""
    while True:
        await asyncio.sleep(lease_s / 3)
        if not await loop_log.acquire(holder, lease_s):
            held = await loop_log.holder()
            log.error("the loop's lease was taken over by %s: stopping this cycle before its next record; "
                      "the new holder resumes it from the store", held[0] if held else "another holder")
            lost.set()
            cycle.cancel()
            return


async def _look(store: Store, ctx: LoopContext, trigger: str, first_look: float) -> dict | None:
    """Holding the lease: resume an unfinished cycle, or start one when ``trigger`` or a configured trigger says
    so; the cycle's ``end`` output or None."""
    loop_log = LoopLog(store, ctx.experiment)
    last = await loop_log.last_cycle()
    steps = await loop_log.steps(last) if last else []
    if steps and END not in {s.step for s in steps}:
        log.info("resuming cycle %d (trigger: %s)", last, steps[0].trigger)
        return await Cycle(store, ctx, last, steps[0].trigger).run()
    since = steps[0].at if steps else 0.0
    why = f"manual: by {ctx.who}" if trigger == "manual" else await check_triggers(store, ctx, since, first_look)
    if why is None:
        return None
    log.info("cycle %d starts: %s", last + 1, why)
    return await Cycle(store, ctx, last + 1, why).run()


async def once(store: Store, ctx: LoopContext, trigger: str, holder: str, first_look: float) -> dict | None:
    """One look: take the lease (None, and nothing done, when another loop holds it), then ``_look`` while
    renewing it; the cycle's ``end`` output, or None (no cycle ran, or the lease was taken over mid-cycle: a
    step running in a worker thread then finishes there, but nothing more is recorded or changed in the store)."""
    loop_log = LoopLog(store, ctx.experiment)
    if not await loop_log.acquire(holder, ctx.cfg.lease_s):
        held = await loop_log.holder()
        log.info("another loop holds the lease (%s, until %s): not starting", *(held or ("?", "?")))
        return None
    lost = asyncio.Event()
    cycle = asyncio.create_task(_look(store, ctx, trigger, first_look))
    renew = asyncio.create_task(_renew(loop_log, holder, ctx.cfg.lease_s, cycle, lost))
    try:
        return await cycle
    except asyncio.CancelledError:
        if lost.is_set():
            return None
        cycle.cancel()  # this look itself was cancelled
        raise
    finally:
        renew.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renew
        if not lost.is_set():
            await loop_log.release(holder)


async def retrain(args: RetrainArgs) -> list[dict]:
    """Run the loop once, or (``--watch``) until cancelled; the ``end`` outputs of the cycles it ran."""
    ctx, url = context(args)
    holder, first_look, ended = f"{args.who}-{secrets.token_hex(4)}", time.time(), []
    async with open_store(url) as store:
        while True:
            out = await once(store, ctx, args.trigger, holder, first_look)
            if out is not None:
                ended.append(out)
            if not args.watch:
                return ended
            args.trigger = ""  # "manual" starts the first cycle only
            await asyncio.sleep(ctx.cfg.poll_s)


def main(argv: list[str]) -> int:
    """Parse the arguments, run the loop, print each cycle's outcome."""
    import json
    import sys

    from tunestack.cli import parse_dataclass
    from workflows.loop.config import LoopConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_dataclass(RetrainArgs, argv, "python -m workflows retrain",
                           "The retrain loop: production feedback -> data set -> fine-tune -> export -> offline gate -> "
                           "publish -> a canary the judge promotes or rolls back.")
    if args.trigger not in ("", "manual"):
        print(f"error: --trigger {args.trigger!r}: expected 'manual' (or leave it out)", file=sys.stderr)
        return 2
    try:
        ended = asyncio.run(retrain(args))
    except (LoopConfigError, ValueError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    for out in ended:
        print(json.dumps(out, indent=2))
    if not ended:
        print("no cycle ran (no trigger fired, or another loop holds the lease)")
    return 0
