"""The live experiment page in a real browser (Debian's Chromium through Playwright), on a real router in front of
a real tritonserver with a SQLite store, and on ``python -m serving page --store``:

* it loads with no console error, draws the judge's bands and the rollout chart, and asks nothing of any other
  host (every request not to 127.0.0.1 is blocked and recorded: none is tried);
* every figure equals the JSON report at the same moment, and it updates when new traffic arrives;
* a real rollout (the controller, on the store) shows its decisions and the state it left;
* labels and audit text with markup render as text; the static snapshot works from disk;
* with ``page_token: true`` the data needs the admin token; the page asks for it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from page_browser import browser, figures, mismatches, tab, wait_rendered, wait_until
from test_router_e2e import TOKEN, make_router, spec, v2_body

from experiments.rollout import RolloutConfig, RolloutController
from experiments.store import AnswerRow, open_store
from serving.page.snapshot import fetch_snapshot
from tunestack.procs import free_port, http_ok, wait_for

pytestmark = pytest.mark.e2e

EXPERIMENT = "sentiment-ab"
ROOT = Path(__file__).parents[1]
LOOK_S = "0.5"


def send(url: str, n: int, start: int = 0, feedback: bool = True) -> int:
    """``n`` requests from 40 users, with feedback on each answer; the number answered."""
    ok = 0
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        for i in range(start, start + n):
            r = c.post(f"/v2/models/{EXPERIMENT}/infer", json=v2_body(["a fine film"]),
                       headers={"X-Request-Id": f"p-{i}", "X-User-Id": f"user-{i % 40}"})
            if r.status_code == 200:
                ok += 1
                if feedback:
                    c.post(f"/v2/experiments/{EXPERIMENT}/feedback", json={"id": f"p-{i}", "label": "positive"})
    return ok


def report(url: str) -> dict:
    return httpx.get(f"{url}/v2/experiments/{EXPERIMENT}/report", timeout=120, trust_env=False).json()


def looks_stored(store: str) -> int:
    async def go() -> int:
        async with open_store(store) as s:
            return len(await s.looks(EXPERIMENT))
    return asyncio.run(go())


@pytest.fixture(scope="module")
def routed(triton, tmp_path_factory):
    """A router with a SQLite store, looking every 0.5 s, with some traffic already judged."""
    folder = tmp_path_factory.mktemp("page")
    store = f"sqlite:///{folder / 'store.sqlite'}"
    with make_router(folder, spec(triton.http_url, weights=(50, 50)), "--store", store,
                     "--look-interval-s", LOOK_S) as router:
        assert send(router.url, 120) == 120
        wait_for(lambda: looks_stored(store) >= 2, 60, "two looks of the judge in the store")
        yield router, store, folder


def test_the_page_draws_the_report_and_asks_no_other_host(routed):
    router, store, _ = routed
    with browser() as b, tab(b) as t:
        t.page.goto(f"{router.url}/experiments/{EXPERIMENT}")
        wait_rendered(t)
        t.page.wait_for_selector(".chart .main-svg", timeout=60_000)
        assert t.page.locator("#verdicts .chart .main-svg").count() >= 5  # a band per judged metric
        assert t.page.locator("#rollout-chart .main-svg").count() >= 1
        # the bands: a filled confidence-sequence trace in every verdict chart
        assert t.page.locator("#verdicts .chart .js-fill").count() >= 5
        assert t.page.locator("#experiment-name").text_content() == EXPERIMENT
        assert t.page.locator("#state").text_content() == "running"
        now = report(router.url)  # no traffic flows now: the page's next draw shows this very moment
        renders = int(t.page.evaluate("document.body.dataset.renders"))
        wait_rendered(t, renders + 1)
        assert len(figures(t)) > 40  # the arms, the sample-ratio check, every verdict, the audit log
        assert not mismatches(t, now)
        assert t.page.locator("#headline").text_content() == now["judge"]["headline"]
        assert t.errors == [] and t.blocked == []


def test_the_page_updates_when_new_traffic_arrives(routed):
    router, _, _ = routed
    with browser() as b, tab(b) as t:
        t.page.goto(f"{router.url}/experiments/{EXPERIMENT}")
        wait_rendered(t)
        cell = "[data-path='arms\u001fcontrol\u001frequests']"
        before = int(t.page.locator(cell).get_attribute("data-value"))
        send(router.url, 40, start=10_000, feedback=False)
        wait_until(t, f"Number(document.querySelector(\"{cell}\").dataset.value) > {before}", "the new requests shown")
        assert t.errors == [] and t.blocked == []


def test_a_rollout_shows_its_decisions_and_state(routed):
    router, store, _ = routed
    cfg = RolloutConfig(steps=(50.0, 100.0), min_step_requests=10_000, step_timeout_s=1.0, on_timeout="rollback",
                        poll_s=0.3)

    async def roll():
        async with open_store(store) as s:
            return await RolloutController(s, EXPERIMENT, cfg).run()

    outcome = asyncio.run(roll())
    assert outcome.result == "rollback"
    with browser() as b, tab(b) as t:
        t.page.goto(f"{router.url}/experiments/{EXPERIMENT}")
        wait_rendered(t)
        assert t.page.locator("#state").text_content() == "rolled back"
        decisions = t.page.locator("#audit .decision").all_text_contents()
        assert decisions[-2:] == ["start", "rollback"]
        why = t.page.locator("#audit .audit-row").last.text_content()
        assert "undecided after" in why  # the evidence from the audit log
        assert t.errors == [] and t.blocked == []


@pytest.fixture
def hostile_store(tmp_path):
    """A store whose predicted labels and audit text carry markup."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    spec_ = spec("http://127.0.0.1:9", weights=(50, 50))

    async def go():
        async with open_store(url) as s:
            await s.add_revision(EXPERIMENT, spec_, "file", "file <b>x</b>", "first start")
            await s.add_revision(EXPERIMENT, spec_, "admin", "ops", '<img src=x onerror="window.pwned=2">why')
            now = time.time()
            await s.write_batch([AnswerRow(EXPERIMENT, f"r{i}-{arm}", arm, arm, "1", f"u{i}", 0.01,
                                           ("<script>window.pwned=1</script>",), now, period=2)
                                 for i in range(20) for arm in ("control", "treatment")])
    asyncio.run(go())
    return url


def test_markup_in_labels_and_audit_renders_as_text_and_the_snapshot_works_offline(hostile_store, tmp_path):
    port = free_port()
    with subprocess.Popen([sys.executable, "-m", "serving", "page", "--store", hostile_store, "--port", str(port)],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) as server:
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: http_ok(f"{url}/experiments/{EXPERIMENT}/data"), 60, "python -m serving page")
            with browser() as b:
                with tab(b) as t:
                    t.page.goto(f"{url}/experiments/{EXPERIMENT}")
                    wait_rendered(t)
                    assert "<script>window.pwned=1</script>" in t.page.locator("#arms").text_content()
                    assert '<img src=x onerror="window.pwned=2">why' in t.page.locator("#audit").text_content()
                    assert t.page.evaluate("window.pwned === undefined")
                    assert t.page.locator("body script, #arms img, #audit img").count() == 0
                    assert t.errors == [] and t.blocked == []
                snapshot = fetch_snapshot(url, EXPERIMENT, tmp_path / "report")
            assert server.poll() is None
        finally:
            server.terminate()
        with browser() as b, tab(b) as t:  # the server is gone: the snapshot reads its files only
            t.page.goto(snapshot.as_uri())
            wait_rendered(t)
            assert "<script>window.pwned=1</script>" in t.page.locator("#arms").text_content()
            assert t.page.evaluate("window.pwned === undefined")
            assert t.errors == [] and t.blocked == []


def test_page_token_guards_the_data_and_the_page_asks_for_it(triton, tmp_path):
    with make_router(tmp_path, spec(triton.http_url, page_token=True), "--store", "memory") as router:
        page_url = f"{router.url}/experiments/{EXPERIMENT}"
        assert httpx.get(page_url, trust_env=False).status_code == 200  # the HTML holds no data
        assert httpx.get(page_url + "/data", trust_env=False).status_code == 401
        wrong = httpx.get(page_url + "/data", headers={"Authorization": "Bearer nope"}, trust_env=False)
        assert wrong.status_code == 401 and "error" in wrong.json()
        right = httpx.get(page_url + "/data", headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False)
        assert right.status_code == 200 and right.json()["token_required"] is True
        with browser() as b, tab(b) as t:
            t.page.goto(page_url)
            t.page.wait_for_selector("#token-form:not([hidden])", timeout=30_000)
            t.page.fill("#token", TOKEN)
            t.page.click("#token-form button")
            wait_rendered(t)
            assert t.page.locator("#experiment-name").text_content() == EXPERIMENT
            assert t.blocked == []
            # the one console error is the browser's own line for the refused 401 before the token was given
            assert all("401" in e for e in t.errors)
