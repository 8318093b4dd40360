"""Headless Chromium for the live page's tests: Debian's /usr/bin/chromium driven by Playwright, with every
request not to 127.0.0.1 (or a file of a snapshot) blocked and recorded, and every console error kept."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PATH_SEP = "\u001f"
"""How page.js joins a figure's path into the report (``data-path``)."""


@dataclass
class Tab:
    """One page in the browser, with what it tried to reach outside and the errors it logged."""

    page: object
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def browser() -> Iterator[object]:
    """Chromium from Debian's packages (``make install`` puts it there); never a downloaded browser."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("file", "data", "blob", "about") or parts.hostname == "127.0.0.1"


@contextmanager
def tab(b, headers: dict[str, str] | None = None) -> Iterator[Tab]:
    """A fresh context and page; requests that are not local are aborted and recorded in ``blocked``."""
    context = b.new_context(extra_http_headers=headers or {}, viewport={"width": 1280, "height": 900})
    t = Tab(context.new_page())

    def route(r):
        if _local(r.request.url):
            r.continue_()
        else:
            t.blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    t.page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
    t.page.on("pageerror", lambda e: t.errors.append(str(e)))
    try:
        yield t
    finally:
        context.close()


def wait_until(t: Tab, expression: str, what: str, timeout_s: float = 60.0) -> None:
    """Until ``expression`` is true in the page. Polled with ``evaluate`` (Playwright's ``wait_for_function``
    compiles its predicate in the page, which the page's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout_s
    while not t.page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not true after {timeout_s:.0f} s ({expression})")
        t.page.wait_for_timeout(100)


def wait_rendered(t: Tab, at_least: int = 1, timeout_s: float = 60.0) -> None:
    """Until page.js has drawn the page ``at_least`` times."""
    wait_until(t, f"Number(document.body.dataset.renders || 0) >= {at_least}", f"the page drawn {at_least} times",
               timeout_s)


def figures(t: Tab) -> list[dict]:
    """Every figure the page shows: its path into the report, its value, and how it is aggregated."""
    return t.page.eval_on_selector_all(
        "[data-path]", "els => els.map(e => ({path: e.dataset.path, value: e.dataset.value, agg: e.dataset.agg || null,"
                       " text: e.textContent}))")


def report_value(report: dict, path: str, agg: str | None):
    value = report
    for key in path.split(PATH_SEP):
        value = value[int(key)] if isinstance(value, list) else value.get(key) if isinstance(value, dict) else None
    if agg == "sum":
        value = sum((value or {}).values())
    return value


def mismatches(t: Tab, report: dict) -> list[str]:
    """The page's figures that differ from ``report`` (the JSON report at the same moment)."""
    out = []
    for f in figures(t):
        expected = report_value(report, f["path"], f["agg"])
        if json.loads(f["value"]) != expected:
            out.append(f"{f['path'].replace(PATH_SEP, '.')}: page {f['value']} vs report {expected!r}")
    return out
