"""``python -m serving page --store URL``: the live experiment page for a store with no router running, read
only, on 127.0.0.1.

    python -m serving page --store sqlite:///reports/demo-X/experiment.store.sqlite
    -> http://127.0.0.1:8090/experiments/sentiment-ab

It serves the router's page (``serving.page``) from the store: the report as ``python -m serving report
--store`` computes it (``experiments.store.cli.store_report``), the history of looks the routers stored, the
audit log. It writes nothing, has no admin action, and listens on the loopback address only: whoever can
reach it can read the store already.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from experiments.store import Store, StoreError, open_store
from experiments.store.cli import store_report
from serving.page.assets import asset_route, page_response
from serving.page.data import page_data
from tunestack import names
from tunestack.cli import parse_dataclass

log = logging.getLogger(__name__)


@dataclass
class PageArgs:
    """Serve the live experiment page from an experiment store (no router needed), on 127.0.0.1."""

    store: str
    """The store URL: sqlite:///PATH or postgresql://..."""
    port: int = names.PAGE_PORT
    """Port to listen on (on 127.0.0.1 only)."""
    log_level: str = "warning"
    """Logging level."""


def create_page_app(store_url: str) -> Starlette:
    """The read-only page server on the store at ``store_url`` (opened at start-up, closed at shut-down)."""
    store: Store = open_store(store_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await store.open()
        try:
            yield
        finally:
            await store.close()

    async def known(name: str) -> JSONResponse | None:
        names_ = await store.experiments()
        if name not in names_:
            return JSONResponse({"error": f"unknown experiment {name!r}; the store holds {names_ or 'none'}"},
                                status_code=404)
        return None

    async def index(request: Request) -> Response:
        experiments = await store.experiments()
        if len(experiments) == 1:
            return RedirectResponse(f"/experiments/{experiments[0]}")
        return JSONResponse({"experiments": experiments, "pages": [f"/experiments/{n}" for n in experiments]})

    async def page(request: Request) -> Response:
        name = request.path_params["name"]
        return await known(name) or page_response(name, f"/experiments/{name}/data")

    async def data(request: Request) -> Response:
        name = request.path_params["name"]
        missing = await known(name)
        if missing is not None:
            return missing
        try:
            exp, report = await store_report(store, name)
            looks = await store.looks(name)
        except StoreError as e:
            return JSONResponse({"error": f"the experiment store is unavailable: {e}"}, status_code=503)
        return JSONResponse(page_data(report, exp.to_dict(), looks), headers={"Cache-Control": "no-store"})

    routes = [Route("/", index), Route("/experiments/{name}", page), Route("/experiments/{name}/data", data),
              asset_route]
    return Starlette(routes=routes, lifespan=lifespan)


def run_page(argv: list[str]) -> int:
    import uvicorn

    args = parse_dataclass(PageArgs, argv, prog="python -m serving page")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(create_page_app(args.store), host=names.HOST, port=args.port, log_level=args.log_level,
                            access_log=False)
    server = uvicorn.Server(config)
    print(f"live experiment pages from {args.store.split('@')[-1]} on http://{names.HOST}:{args.port}/", flush=True)
    server.run()
    return 0
