"""The live page's parts without a browser: the judge's history of looks (in memory and in a real store), the
page's document (state from the audit log, the timeline, thinning), the HTML's escaping, the router's page
endpoints and the store-backed page server through Starlette's test client (the data is the report), and the
spec's ``page_token`` on both."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from starlette.testclient import TestClient

from experiments.errors import ExperimentError
from experiments.judge import judge
from experiments.judge.looks import LookRing, look_of, thin
from experiments.spec import experiment_from_dict
from experiments.store import open_store
from experiments.store.sync import spec_of
from serving.page.data import MOST_LOOKS, experiment_state, page_data, timeline
from serving.page.html import render, safe_json
from serving.page.server import create_page_app
from serving.router.app import create_app
from serving.router.config import RouterConfig
from serving.router.state import RouterState

SPEC = {"name": "ab", "upstream": "http://127.0.0.1:1", "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 50},
                 {"name": "treatment", "model": "m", "version": "2", "weight": 50}]}


def served_state(n: int = 200) -> RouterState:
    """A router state without a store, its in-memory judge fed ``n`` answers from 40 users."""
    state = RouterState.create(RouterConfig(experiment="unused.yaml", look_interval_s=1), experiment_from_dict(SPEC),
                               None)
    for i in range(n):
        arm = state.current[1].assign(f"u{i % 40}", state.rng)
        state.recorder.served(f"r{i}", arm, 0.01 + 0.001 * (i % 7), ("positive",), key=f"u{i % 40}", assigned=arm,
                              confidences=(0.9,), period=state.period)
    return state


def test_a_look_is_the_judges_verdicts_at_that_moment():
    state = served_state()
    assert state.looks is not None
    assert asyncio.run(state.looks.look_once()) is True
    [look] = asyncio.run(state.looks.looks())
    now = judge(state.recorder.unit_table(), state.looks.config).to_dict()
    assert look == look_of(now, look["at"], state.period)
    metric = look["treatments"]["treatment"]["latency_mean"]
    full = now["treatments"]["treatment"]["metrics"]["latency_mean"]
    assert metric == {k: full[k] for k in ("verdict", "estimate", "low", "high", "n_control", "n_treatment")}
    assert look["sample_ratio"]["verdict"] == now["sample_ratio"]["verdict"]
    assert len(json.dumps(look)) < 2000  # compact: a few hundred bytes per treatment


def test_no_look_without_traffic_and_the_ring_is_bounded():
    state = RouterState.create(RouterConfig(experiment="unused.yaml"), experiment_from_dict(SPEC), None)
    assert asyncio.run(state.looks.look_once()) is True  # an empty table is still a valid look
    ring = LookRing(3)
    for t in range(5):
        ring.append({"at": float(t)})
    assert [x["at"] for x in ring.looks()] == [2.0, 3.0, 4.0] and ring.newest_at() == 4.0
    off = RouterState.create(RouterConfig(experiment="unused.yaml", look_interval_s=0), experiment_from_dict(SPEC), None)
    assert off.looks is None
    with pytest.raises(ValueError, match="at least 2"):
        LookRing(1)


def test_thin_keeps_the_first_and_the_newest_evenly():
    looks = [{"at": i} for i in range(1000)]
    kept = thin(looks, 10)
    assert len(kept) == 10 and kept[0]["at"] == 0 and kept[-1]["at"] == 999
    assert all(b["at"] > a["at"] for a, b in zip(kept, kept[1:], strict=False))
    assert thin(looks[:5], 10) == looks[:5]
    doc = page_data({"experiment": "ab"}, {}, looks)
    assert len(doc["looks"]) == MOST_LOOKS and doc["looks_total"] == 1000


def test_looks_in_the_store_newest_last(store_url):
    async def go():
        async with open_store(store_url) as s:
            assert await s.newest_look_at("ab") is None and await s.looks("ab") == []
            for t in (10.0, 20.0, 30.0):
                await s.append_look("ab", {"at": t, "treatments": {}})
            await s.append_look("other", {"at": 99.0, "treatments": {}})
            return await s.newest_look_at("ab"), await s.looks("ab"), await s.looks("ab", limit=2)
    newest, every, two = asyncio.run(go())
    assert newest == 30.0
    assert [x["at"] for x in every] == [10.0, 20.0, 30.0] and [x["at"] for x in two] == [20.0, 30.0]


def audit(*whys: tuple[str, str]) -> list[dict]:
    return [{"revision": i + 1, "at": f"2026-01-01T00:00:0{i}+00:00", "who": "x", "source": src, "why": why,
             "weights": {"control": 50, "treatment": 50}} for i, (src, why) in enumerate(whys)]


@pytest.mark.parametrize(("whys", "state"), [
    ([], "running"),
    ([("file", "first start")], "running"),
    ([("file", "first start"), ("rollout", "step 2/5 (5 %): promote: from step 1: ...")], "ramping"),
    ([("rollout", "step 5/5 (100 %): complete: error_rate equivalent")], "promoted"),
    ([("rollout", "step 1/5 (0 %): rollback: accuracy worse")], "rolled back"),
    ([("rollout", "step 2/5 (5 %): halt: sample ratio mismatch: ...")], "halted on sample-ratio mismatch"),
    ([("rollout", "step 1/5 (0 %): rollback: x"), ("admin", "back to 50/50")], "running"),
])
def test_the_state_comes_from_the_newest_revision(whys, state):
    got = experiment_state(audit(*whys))
    assert got["state"] == state
    if state == "ramping":
        assert (got["step"], got["percent"]) == (2, 5.0)
    assert [t["action"] for t in timeline(audit(*whys))] == [
        w.split(": ")[1] if s == "rollout" else s for s, w in whys]


def test_the_html_cannot_be_broken_out_of():
    evil = {"label": "</script><script>alert(1)</script>", "amp": "a & b <!--"}
    text = safe_json(evil)
    assert "<" not in text and ">" not in text and "&" not in text and json.loads(text) == evil
    page = render("ab</title><script>x()</script>", {"data": evil})
    assert "<script>x()</script>" not in page and "</script><script>alert(1)" not in page
    assert len(re.findall(r"<script\b", page)) == 3  # the settings, plotly.js, page.js


def test_router_page_endpoints_serve_the_report():
    state_spec = {**SPEC, "page_token": False}
    app = create_app(RouterConfig(experiment="unused.yaml", look_interval_s=0), experiment_from_dict(state_spec))
    with TestClient(app) as client:
        page = client.get("/experiments/ab")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        assert '"data_url":"/experiments/ab/data"' in page.text
        doc = client.get("/experiments/ab/data").json()
        report = client.get("/v2/experiments/ab/report").json()
        doc["report"].pop("generated_at"), report.pop("generated_at")
        assert doc["report"] == report and doc["state"]["state"] == "running"
        assert [a["name"] for a in doc["spec"]["arms"]] == ["control", "treatment"]
        assert client.get("/experiments/nope").status_code == 404
        assert client.get("/experiments/nope/data").json()["error"].startswith("unknown experiment 'nope'")
        js = client.get("/page-assets/plotly.min.js")
        assert js.status_code == 200 and len(js.content) > 1_000_000
        assert client.get("/page-assets/..%2Fhtml.py").status_code == 404
        assert client.get("/page-assets/secret.txt").json()["error"].startswith("no such page asset")


def test_page_token_is_a_checked_spec_key_stored_only_when_set():
    on = experiment_from_dict({**SPEC, "page_token": True})
    assert on.page_token and on.to_dict()["page_token"] is True
    assert "page_token" not in experiment_from_dict(SPEC).to_dict()
    with pytest.raises(ExperimentError, match="page_token must be true or false, got 'yes'"):
        experiment_from_dict({**SPEC, "page_token": "yes"})


def test_router_config_checks_the_look_settings():
    with pytest.raises(ExperimentError) as e:
        RouterConfig(experiment="x.yaml", look_interval_s=0.1, look_ring=1)
    assert "look_interval_s must be 0" in str(e.value) and "look_ring must be >= 2" in str(e.value)


def test_the_store_page_server_keeps_a_page_token_experiments_data_behind_the_token(tmp_path):
    """``python -m serving page --store`` checks ``page_token`` as the router does (``serving.admin_token``)."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"

    async def fill():
        async with open_store(url) as s:
            for name, guarded in (("ab", True), ("open", False)):
                exp = experiment_from_dict({**SPEC, "name": name, "page_token": guarded})
                await s.add_revision(name, spec_of(exp), "file", "test", "start")
    asyncio.run(fill())
    right = {"Authorization": "Bearer s3cret"}
    with TestClient(create_page_app(url, "alice:s3cret")) as client:
        assert client.get("/experiments/ab").status_code == 200  # the HTML holds no data
        missing, wrong = client.get("/experiments/ab/data"), client.get("/experiments/ab/data",
                                                                       headers={"Authorization": "Bearer nope"})
        assert missing.status_code == 401 and "missing admin token" in missing.json()["error"]
        assert wrong.status_code == 401 and wrong.json() == {"error": "wrong admin token"}
        doc = client.get("/experiments/ab/data", headers=right)
        assert doc.status_code == 200 and doc.json()["token_required"] is True
        assert doc.json()["report"]["experiment"] == "ab"
        unguarded = client.get("/experiments/open/data")
        assert unguarded.status_code == 200 and unguarded.json()["token_required"] is False
    with TestClient(create_page_app(url)) as client:  # started without a token: the guarded data is refused
        refused = client.get("/experiments/ab/data", headers=right)
        assert refused.status_code == 403 and "--admin-token-file" in refused.json()["error"]
        assert client.get("/experiments/open/data").status_code == 200
