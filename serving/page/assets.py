"""Starlette endpoints shared by every server of the page: the assets (``GET /page-assets/NAME``) and the HTML
response with its Content-Security-Policy (nothing may load from, or connect to, another origin)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from serving.page.html import ASSET_PATH, ASSETS, asset_file, render

POLL_MS = 2000
"""How often the page asks for new data, in milliseconds."""
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'none'")
"""The page's Content-Security-Policy: scripts, styles and data from this server only (plotly sets inline
styles); no other origin is ever contacted."""


def page_response(name: str, data_url: str) -> HTMLResponse:
    """The page of experiment ``name``, polling ``data_url``."""
    return HTMLResponse(render(name, {"data_url": data_url, "poll_ms": POLL_MS}),
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


async def asset(request: Request) -> Response:
    name = request.path_params["file"]
    if name not in ASSETS:
        return JSONResponse({"error": f"no such page asset {name!r}; expected one of {list(ASSETS)}"}, status_code=404)
    return FileResponse(asset_file(name), headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})


asset_route = Route(ASSET_PATH + "/{file}", asset)
