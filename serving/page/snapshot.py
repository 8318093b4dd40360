"""A static snapshot of the live page: ``page.html`` with the page's document embedded, and the same
``page.js``, ``page.css`` and ``plotly.min.js`` copied beside it into ``page-assets/``. It opens from disk
with no server and no network, and shows the page as it was when taken.

``watch_page`` is what the demo and the drills use: it logs the page's URL while they run and leaves the
snapshot in their report folder when they end.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from serving.page.html import ASSETS, asset_file, render

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "page.html"
ASSET_DIR = "page-assets"


def save_snapshot(document: dict[str, Any], folder: str | Path) -> Path:
    """Write ``folder/page.html`` (``document``, a ``page_data`` dict, embedded) and its assets beside it."""
    folder = Path(folder)
    (folder / ASSET_DIR).mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        shutil.copyfile(asset_file(name), folder / ASSET_DIR / name)
    path = folder / SNAPSHOT_FILE
    path.write_text(render(document["experiment"], {"data": document, "static": True}, assets=ASSET_DIR))
    return path


def page_url(router_url: str, experiment: str) -> str:
    return f"{router_url.rstrip('/')}/experiments/{experiment}"


def fetch_snapshot(router_url: str, experiment: str, folder: str | Path, token: str | None = None) -> Path:
    """The page of a running router (or ``python -m serving page``) now, saved as a snapshot in ``folder``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=120, trust_env=False) as client:
        resp = client.get(page_url(router_url, experiment) + "/data", headers=headers)
    resp.raise_for_status()
    return save_snapshot(resp.json(), folder)


@contextlib.contextmanager
def watch_page(router_url: str, experiment: str, folder: str | Path, token: str | None = None) -> Iterator[str]:
    """Log the live page's URL now; on the way out (the router still running) save its snapshot in ``folder``.
    A snapshot that cannot be taken is logged, never raised: the run's own result matters more."""
    url = page_url(router_url, experiment)
    log.info("live page of experiment %s: %s", experiment, url)
    try:
        yield url
    finally:
        try:
            path = fetch_snapshot(router_url, experiment, folder, token)
            log.info("snapshot of the live page: %s", path)
        except (httpx.HTTPError, OSError) as e:
            log.warning("no snapshot of the live page (%s): %s", url, e)
