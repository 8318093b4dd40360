"""Reading a store without a router: ``python -m serving report --store URL`` and ``python -m serving audit``.

    python -m serving audit --store sqlite:///reports/demo-X/experiment.store.sqlite
    python -m serving report --store postgresql://router@db/tunestack --experiment sentiment-ab
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from experiments.judge import JudgeConfig
from experiments.spec import Experiment, experiment_from_dict
from experiments.store import Store, StoreError, audit_entry, open_store
from experiments.store.unit_table import table_for
from tunestack.cli import parse_dataclass

LATENCY_WINDOW = 50_000
"""Newest latencies per arm the report uses (the router's default ``latency_window``)."""


async def _with_store(url: str, work) -> Any:
    async with open_store(url) as store:
        return await work(store)


async def experiment_name(store: Store, name: str | None) -> str:
    names = await store.experiments()
    if name:
        if name not in names:
            raise ValueError(f"experiment {name!r} is not in the store {store.url}; it holds: {names or 'none'}")
        return name
    if len(names) != 1:
        raise ValueError(f"the store {store.url} holds {len(names)} experiments ({names}); name one with --experiment")
    return names[0]


def report_from_store(url: str, experiment: str | None, alpha: float, resamples: int) -> dict[str, Any]:
    """The report over every replica's traffic, computed from the store, as ``GET .../report`` gives it
    (``store_report``)."""
    async def work(store: Store) -> dict[str, Any]:
        return (await store_report(store, await experiment_name(store, experiment), alpha, resamples))[1]

    try:
        return asyncio.run(_with_store(url, work))
    except StoreError as e:
        raise RuntimeError(str(e)) from None


async def store_report(store: Store, name: str, alpha: float = 0.05,
                       resamples: int = 2000) -> tuple[Experiment, dict[str, Any]]:
    """The experiment's newest revision and its report from an open store: the judge's verdicts on the same
    unit table the routers judge, and the drift section from the texts the routers monitored and the references
    they kept there (built in a worker thread)."""
    from experiments.drift.monitor import drift_report
    from experiments.experiment_report import build_report

    config = JudgeConfig(alpha=alpha)
    latest = await store.latest_revision(name)
    if latest is None:
        raise ValueError(f"experiment {name!r} has no revision in the store {store.url}")
    exp = experiment_from_dict(latest.spec, f"store revision {latest.revision}")
    snapshot = await store.snapshot(name, LATENCY_WINDOW)
    audit = [audit_entry(r) for r in await store.revisions(name, 50)]
    table = await table_for(store, name, exp.arm_names, config)
    windows = await store.drift_windows(name)

    def build() -> dict[str, Any]:
        drift = drift_report(windows) if windows is not None else None
        return build_report(exp, snapshot, table, alpha, resamples, np.random.default_rng(0), drift, config)

    report = await asyncio.to_thread(build)
    report["data_source"] = f"store, latencies: newest {LATENCY_WINDOW} per arm"
    report["audit"] = audit
    return exp, report


@dataclass
class AuditArgs:
    """Print an experiment's revisions (weights, who, when, why) from its store."""

    store: str
    """The store URL: sqlite:///PATH or postgresql://..."""
    experiment: str | None = None
    """Experiment name (default: the store's only experiment)."""
    limit: int = 100
    """The newest LIMIT revisions."""
    format: Literal["markdown", "json"] = "markdown"
    """Output format."""


def run_audit(argv: list[str]) -> int:
    args = parse_dataclass(AuditArgs, argv, prog="python -m serving audit")

    async def work(store: Store) -> tuple[str, list[dict]]:
        name = await experiment_name(store, args.experiment)
        return name, [audit_entry(r) for r in await store.revisions(name, args.limit)]

    try:
        name, entries = asyncio.run(_with_store(args.store, work))
    except (ValueError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"experiment": name, "revisions": entries}, indent=2))
        return 0
    from experiments.experiment_report import audit_lines

    print(f"# Weight changes of `{name}`\n")
    print("\n".join(audit_lines({"audit": entries})[2:]))
    return 0
