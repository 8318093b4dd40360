"""The live experiment page on the router (``serving.page``), read-only:

    GET /experiments/{name}          the page (HTML); it polls the data below every 2 s
    GET /experiments/{name}/data     the page's document: the report, the spec, the state, the history of looks
    GET /page-assets/{file}          page.js, page.css, plotly.min.js (from the installed packages)

The data is the report ``GET /v2/experiments/{name}/report`` answers (``admin.report_json``, defaults), read
from the same aggregates when someone looks: nothing is added to the request path. With ``page_token: true``
in the experiment file the data needs the admin bearer token (the page asks for it); the HTML and the assets
hold no data and stay open. No admin action is on the page.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from experiments.store import StoreUnavailable
from serving.page.assets import asset_route, page_response
from serving.page.data import page_data
from serving.router.admin import report_json
from serving.router.state import get_state

log = logging.getLogger(__name__)


async def page(request: Request) -> Response:
    exp = get_state(request).check_experiment(request.path_params["name"])
    return page_response(exp.name, f"/experiments/{exp.name}/data")


async def data(request: Request) -> Response:
    state = get_state(request)
    exp = state.check_experiment(request.path_params["name"])
    if exp.page_token:
        state.require_admin(request)
    report = await report_json(state, exp)
    looks: list[dict] = []
    if state.looks is not None:
        try:
            looks = await state.looks.looks()
        except StoreUnavailable as e:
            log.warning("the page shows no history of looks: the store is unavailable (%s)", e)
    return JSONResponse(page_data(report, exp.to_dict(), looks, exp.page_token), headers={"Cache-Control": "no-store"})


routes = [
    Route("/experiments/{name}", page),
    Route("/experiments/{name}/data", data),
    asset_route,
]
