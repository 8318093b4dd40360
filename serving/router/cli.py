"""``python -m serving router ...`` runs the A/B router; ``python -m serving report ...`` prints a report.

The ``router`` options mirror ``RouterConfig`` one to one, ``report``'s ``ReportArgs`` (``tunestack.cli``). The router serves HTTP (uvicorn) and, on
``--grpc-port``, gRPC (``serving.router.grpc_door``) from one process and one event loop. The admin
token comes from ``--admin-token-file`` or the environment variable ``TUNESTACK_ROUTER_ADMIN_TOKEN``,
read once here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import uvicorn

from experiments.errors import ExperimentError
from experiments.spec import load_experiment
from experiments.store import STORE_ENV, default_store_url
from serving.admin_token import TOKEN_ENV, read_token
from serving.router.config import NO_STORE, RouterConfig
from tunestack import names
from tunestack.cli import parse_dataclass

GRACEFUL_SHUTDOWN_S = 10
"""Seconds in-flight requests (HTTP and gRPC) get to finish after SIGTERM."""


def parse_router_config(argv: list[str]) -> RouterConfig:
    """One flag per ``RouterConfig`` field, typed and documented from the dataclass (``tunestack.cli``); its
    validation's problems are a usage error (exit status 2)."""
    return parse_dataclass(RouterConfig, argv, "python -m serving router", "Run the A/B router in front of Triton.",
                           config_file=False, errors=(ExperimentError,))


def run_router(argv: list[str]) -> int:
    from serving.router.app import create_app

    config = parse_router_config(argv)
    try:
        experiment = load_experiment(config.experiment, config.triton_url, config.triton_grpc_url)
        store = config.store or os.environ.get(STORE_ENV) or experiment.store or default_store_url(config.experiment)
        config = replace(config, store=None if store == NO_STORE else store)
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = read_token(config.admin_token_file)
    if token is None:
        logging.getLogger(__name__).warning("no admin token (--admin-token-file or $%s): admin API disabled", TOKEN_ENV)
    app = create_app(config, experiment, token, handle_sighup=True)
    grpc = f" and grpc://{config.host}:{config.grpc_port}" if config.grpc_port else ""
    print(f"router for experiment {experiment.name!r} on http://{config.host}:{config.port}{grpc} "
          f"(arms: {', '.join(f'{a}={s:.3f}' for a, s in experiment.shares.items())})", flush=True)
    # the hot path's settings: uvloop and httptools (not left to "auto"), no access log, no proxy-header
    # rewriting, no Date/Server headers on every answer (measured by the router benchmark, docs/benchmarks.md)
    server_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                   loop="uvloop", http="httptools", access_log=False, proxy_headers=False,
                                   server_header=False, date_header=False,
                                   timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    with asyncio.Runner(loop_factory=server_config.get_loop_factory()) as runner:
        try:
            runner.run(RouterServer(server_config, config).serve())
        except OSError as e:  # the gRPC port is taken (uvicorn reports its own port itself)
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


class RouterServer(uvicorn.Server):
    """uvicorn's server that also starts the gRPC endpoint on start-up and stops it on shut-down, on the
    app's ``RouterState`` (both inside ``serve()``, which re-raises SIGTERM once it returns)."""

    def __init__(self, server_config: uvicorn.Config, config: RouterConfig):
        super().__init__(server_config)
        self.state = server_config.app.state.router
        self.grpc_port = config.grpc_port
        self.grpc = None

    async def startup(self, sockets=None) -> None:
        from serving.router.grpc_door import start_grpc_server

        if self.grpc_port:
            self.grpc = await start_grpc_server(self.state, self.config.host, self.grpc_port)
        await super().startup(sockets)

    async def shutdown(self, sockets=None) -> None:
        from serving.router.grpc_door import stop_grpc_server

        if self.grpc is None:
            return await super().shutdown(sockets)
        await asyncio.gather(stop_grpc_server(self.grpc, self.state, GRACEFUL_SHUTDOWN_S), super().shutdown(sockets))


@dataclass
class ReportArgs:
    """Print an experiment's report from a running router (or computed from its store)."""

    url: str = names.ROUTER_URL
    """The router's base URL."""
    experiment: str | None = None
    """Experiment name (default: the router's only experiment)."""
    alpha: float = 0.05
    """Significance level of the verdicts."""
    resamples: int = 2000
    """Bootstrap resamples for the quantile intervals."""
    format: Literal["markdown", "json"] = "markdown"
    """Output format."""
    out: str | None = None
    """Also write the report to this file (e.g. reports/ab.md), with the latency CDF per arm next to it
    (reports/ab-latency-cdf.png)."""
    store: str | None = None
    """Compute the report from this experiment store URL (every replica's traffic, no router needed) instead of
    asking the router at --url; needs --experiment when the store holds several."""


def run_report(argv: list[str]) -> int:
    import httpx

    args = parse_dataclass(ReportArgs, argv, prog="python -m serving report")
    if args.store:
        from experiments.store.cli import report_from_store

        try:
            report = report_from_store(args.store, args.experiment, args.alpha, args.resamples)
        except (ValueError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return _print_report(report, args.format, args.out)
    try:
        with httpx.Client(base_url=args.url, timeout=60, trust_env=False) as client:
            name = args.experiment or client.get("/v2/experiments").raise_for_status().json()["experiments"][0]
            resp = client.get(f"/v2/experiments/{name}/report", params={"alpha": args.alpha, "resamples": args.resamples})
    except httpx.HTTPError as e:
        print(f"error: cannot reach the router at {args.url}: {e}", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        print(f"error: {resp.status_code}: {resp.text}", file=sys.stderr)
        return 1
    return _print_report(resp.json(), args.format, args.out)


def _print_report(report: dict, fmt: str, out_file: str | None) -> int:
    from experiments.experiment_report import plot_latency_cdf, render_markdown

    text = json.dumps(report, indent=2) if fmt == "json" else render_markdown(report)
    print(text)
    if out_file:
        out = Path(out_file)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        plot_latency_cdf(report, str(out.with_name(out.stem + "-latency-cdf.png")))
    return 0
