"""The page's HTML and the files it loads, all from this package: the page's own ``page.js`` and ``page.css``
(``static/``) and plotly.js from the installed ``plotly`` wheel's package data. No request leaves the machine.

``render`` fills ``static/page.html``: the title (HTML-escaped) and the page's settings as JSON in a
``<script type="application/json">`` element, with ``<``, ``>`` and ``&`` written as ``\\u003c``... so no value
can end the element. ``page.js`` puts every value into the page as text (``textContent``), never as markup.
"""

from __future__ import annotations

import html
import importlib.util
import json
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent / "static"
PLOTLY_JS = "plotly.min.js"
ASSETS = ("page.css", "page.js", PLOTLY_JS)
"""The files the page loads, by name (served at ``ASSET_PATH/NAME``, copied beside a snapshot)."""
ASSET_PATH = "/page-assets"


def asset_file(name: str) -> Path:
    """Where asset ``name`` lies on disk; ``KeyError`` for any other name."""
    if name not in ASSETS:
        raise KeyError(name)
    if name != PLOTLY_JS:
        return STATIC / name
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the plotly package is not installed; the live page needs its plotly.min.js "
                                "(pip install plotly)")
    return Path(spec.origin).parent / "package_data" / PLOTLY_JS


def safe_json(value: Any) -> str:
    """JSON that can sit inside a ``<script>`` element: ``<``, ``>``, ``&`` escaped as JSON unicode escapes."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(name: str, settings: dict[str, Any], assets: str = ASSET_PATH) -> str:
    """The page for experiment ``name``; ``settings`` (``page.js`` reads them): ``data_url`` (polled) or ``data``
    (embedded, for a snapshot), ``poll_ms``; ``assets``: where the assets are (a URL path, or ``.`` beside it)."""
    template = (STATIC / "page.html").read_text()
    return (template.replace("{{title}}", html.escape(f"experiment {name}"))
            .replace("{{assets}}", html.escape(assets.rstrip("/"), quote=True))
            .replace("{{settings}}", safe_json({"experiment": name, **settings})))
