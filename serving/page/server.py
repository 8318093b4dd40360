"""``python -m serving page --store URL``: the live experiment page for a store with no router running, read
only, on 127.0.0.1.

    python -m serving page --store sqlite:///reports/demo-X/experiment.store.sqlite
    -> http://127.0.0.1:8090/experiments/sentiment-ab

It serves the router's page (``serving.page``) from the store: the report as ``python -m serving report
--store`` computes it (``experiments.store.cli.store_report``), the history of looks the routers stored, the
audit log. It writes nothing, has no admin action, and listens on the loopback address only. An experiment
whose stored spec has ``page_token: true`` keeps its data behind the admin token here too, checked as the
router checks it (``serving.admin_token``: ``--admin-token-file`` or ``$TUNESTACK_ROUTER_ADMIN_TOKEN``; 401
without it or with a wrong one, 403 when the server has none); the HTML and the assets stay open.
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
from serving.admin_token import TOKEN_ENV, TokenRefused, bearer_name, parse_tokens, read_token
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
    admin_token_file: str | None = None
    """File holding the admin bearer token (else env TUNESTACK_ROUTER_ADMIN_TOKEN): the data of an experiment
    with page_token: true needs it."""
    log_level: str = "warning"
    """Logging level."""


def create_page_app(store_url: str, admin_token: str | None = None) -> Starlette:
    """The read-only page server on the store at ``store_url`` (opened at start-up, closed at shut-down);
    ``admin_token``: the token text (``serving.admin_token.parse_tokens``), None when none was set."""
    store: Store = open_store(store_url)
    tokens = parse_tokens(admin_token) if admin_token else None

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
            latest = await store.latest_revision(name)
            if latest is not None and latest.spec.get("page_token"):
                bearer_name(tokens, request.headers.get("authorization", ""))
            exp, report = await store_report(store, name)
            looks = await store.looks(name)
        except TokenRefused as e:
            return JSONResponse({"error": str(e)}, status_code=e.status_code)
        except StoreError as e:
            return JSONResponse({"error": f"the experiment store is unavailable: {e}"}, status_code=503)
        return JSONResponse(page_data(report, exp.to_dict(), looks, exp.page_token),
                            headers={"Cache-Control": "no-store"})

    routes = [Route("/", index), Route("/experiments/{name}", page), Route("/experiments/{name}/data", data),
              asset_route]
    return Starlette(routes=routes, lifespan=lifespan)


def run_page(argv: list[str]) -> int:
    import uvicorn

    args = parse_dataclass(PageArgs, argv, prog="python -m serving page")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = read_token(args.admin_token_file)
    if token is None:
        log.warning("no admin token (--admin-token-file or $%s): the data of a page_token experiment is refused",
                    TOKEN_ENV)
    config = uvicorn.Config(create_page_app(args.store, token), host=names.HOST, port=args.port, log_level=args.log_level,
                            access_log=False)
    server = uvicorn.Server(config)
    print(f"live experiment pages from {args.store.split('@')[-1]} on http://{names.HOST}:{args.port}/", flush=True)
    server.run()
    return 0
