"""The rollout controller against a real SQLite experiment store filled with answers and feedback (no router):
its decisions, the revisions it writes (the audit log), resuming after a restart, and its configuration."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import yaml

from experiments.rollout.cli import run_rollout
from experiments.rollout.config import RolloutArgs, RolloutConfig, RolloutConfigError
from experiments.rollout.controller import RolloutController, parse_why, step_weights
from experiments.rollout.decision import HOLD, PROMOTE, ROLLBACK, WAIT, decide
from experiments.spec import experiment_from_dict, load_experiment
from experiments.store import open_store
from experiments.store.base import AnswerRow
from experiments.store.sync import spec_of

SPEC = {"name": "exp", "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 100},
                 {"name": "cand", "model": "m", "version": "2", "weight": 0}]}
SECTION = {"steps": [10, 50, 100], "min_step_requests": 0, "poll_s": 0.01, "step_timeout_s": 30,
           "judge": {"quantile": 0.95, "tune_n": 200,
                     "margins": {"error_rate": 0.05, "latency_p99": 20.0, "label_distribution": 0.2},
                     "min_samples": {"error_rate": 50, "latency_p99": 50, "latency_mean": 50, "accuracy": 50,
                                     "label_distribution": 50, "confidence_mean": 50}}}


def fill(url: str, n: int = 400, cand_correct: float = 0.8, cand_slowdown_ms: float = 0.0) -> None:
    """Revision 1 (the file), ``n`` answers per arm over 200 users, and feedback on every answer."""
    rng = np.random.default_rng(0)

    async def work() -> None:
        async with open_store(url) as store:
            await store.add_revision("exp", spec_of(experiment_from_dict(SPEC)), "file", "file exp.yaml", "first start")
            rows, truth = [], {}
            for arm, extra, p in (("control", 0.0, 0.8), ("cand", cand_slowdown_ms, cand_correct)):
                for i in range(n):
                    label = "pos" if i % 2 else "neg"
                    rid = f"{arm}-{i}"
                    rows.append(AnswerRow("exp", rid, arm, arm, "1", f"user{i % 200}",
                                          (5 + rng.exponential(1.0) + extra) / 1000, (label,), 1.0))
                    truth[rid] = (arm, label if rng.random() < p else ("neg" if label == "pos" else "pos"))
            await store.write_batch(rows)
            for rid, (_, label) in truth.items():  # the store joins each to its answer: arm, correct
                await store.add_feedback("exp", rid, (label,))

    asyncio.run(work())


def revisions(url: str) -> list:
    async def work():
        async with open_store(url) as store:
            return await store.revisions("exp", 100)

    return asyncio.run(work())


def rollout(url: str, section: dict | None = None):
    async def work():
        async with open_store(url) as store:
            return await RolloutController(store, "exp", RolloutConfig.from_dict(section or SECTION)).run()

    return asyncio.run(work())


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'exp.store.sqlite'}"


def test_equivalent_arms_are_promoted_to_100_percent_through_the_store(url):
    fill(url)
    out = rollout(url)
    assert out.result == "complete" and out.step == 3 and out.percent == 100, out.reason
    revs = revisions(url)
    ours = [r for r in revs if r.source == "rollout"]
    assert [r.who for r in ours] == ["rollout"] * 4
    assert [parse_why(r.why)[2] for r in ours] == ["start", PROMOTE, PROMOTE, "complete"]
    assert [r.weights()["cand"] for r in ours] == [10, 50, 100, 100]
    assert [r.weights()["control"] for r in ours] == [90, 50, 0, 0]
    assert "latency_p99 equivalent within margin" in ours[1].why


def test_worse_accuracy_rolls_back_at_the_first_step(url):
    fill(url, cand_correct=0.3)
    out = rollout(url)
    assert (out.result, out.step, out.percent) == (ROLLBACK, 1, 0.0)
    assert out.reason.startswith("accuracy worse")
    last = revisions(url)[-1]
    assert last.source == "rollout" and last.weights() == {"control": 100, "cand": 0}
    assert parse_why(last.why) == (1, 10.0, ROLLBACK)
    assert (out.treatment_requests, out.treatment_users) == (0, 0)  # every row predates the rollout


def test_slower_candidate_rolls_back_on_p99(url):
    fill(url, cand_slowdown_ms=40.0)
    out = rollout(url)
    assert out.result == ROLLBACK and "latency_p99 worse" in out.reason, out.reason


def test_restart_resumes_at_the_stored_step_and_a_finished_rollout_is_not_repeated(url):
    fill(url)
    exp = experiment_from_dict(SPEC)

    async def promote_to_step_2():
        async with open_store(url) as store:
            for step, pct, action in ((1, 10, "start"), (2, 50, "promote")):
                new = exp.with_weights(step_weights(exp, "cand", pct))
                await store.add_revision("exp", spec_of(new), "rollout", "rollout", f"step {step}/3 ({pct} %): {action}: x")

    asyncio.run(promote_to_step_2())
    out = rollout(url)
    assert out.resumed and out.result == "complete"
    assert [parse_why(r.why)[:2] for r in revisions(url) if r.source == "rollout"] == [(1, 10), (2, 50), (3, 100), (3, 100)]
    again = rollout(url)
    assert again.result == "complete" and again.revisions == [], "a finished rollout is reported, not repeated"


def test_a_person_changing_the_weights_mid_rollout_stops_it(url):
    fill(url)
    exp = experiment_from_dict(SPEC)

    async def start_then_admin():
        async with open_store(url) as store:
            new = exp.with_weights(step_weights(exp, "cand", 10))
            await store.add_revision("exp", spec_of(new), "rollout", "rollout", "step 1/3 (10 %): start: x")
            await store.add_revision("exp", spec_of(exp), "admin", "alice", "manual stop")

    asyncio.run(start_then_admin())
    out = rollout(url)
    assert out.result == "stopped" and "alice" in out.reason and out.revisions == []


def test_cli_function_writes_the_report_and_the_rollout_section_is_accepted_by_the_router(url, tmp_path):
    fill(url)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "rollout": SECTION}))
    assert load_experiment(path).name == "exp"  # the router ignores the section
    out, md = run_rollout(RolloutArgs(experiment=str(path), steps=("50", "100"), store=url, out_dir=str(tmp_path)))
    assert out.result == "complete" and out.steps == [50.0, 100.0]
    data = json.loads((md.parent / "rollout.json").read_text())
    assert data["outcome"]["result"] == "complete" and data["config"]["steps"] == [50.0, 100.0]
    assert (md.parent / "weights.png").stat().st_size > 0 and (md.parent / "intervals.png").stat().st_size > 0
    text = md.read_text()
    assert "**complete** at step 2/2" in text and "| latency p99 |" in text


def test_decide_rules():
    cfg = RolloutConfig(min_step_requests=10, step_timeout_s=60)
    good = {n: {"verdict": "equivalent within margin", "low": -1, "high": 1, "unit": "", "n_control": 9,
                "n_treatment": 9} for n in ("error_rate", "latency_p99", "label_distribution", "accuracy")}
    assert decide(good, cfg, 10, 1).action == PROMOTE
    assert decide(good, cfg, 9, 1).action == WAIT, "too few new requests at this step"
    worse = {**good, "accuracy": {**good["accuracy"], "verdict": "worse"}}
    assert decide(worse, cfg, 0, 0).action == ROLLBACK, "a rollback never waits"
    shifted = {**good, "label_distribution": {**good["label_distribution"], "verdict": "different"}}
    assert decide(shifted, cfg, 10, 1).failing == ("label_distribution",)
    pending = {**good, "latency_p99": {**good["latency_p99"], "verdict": "no decision yet"}}
    assert decide(pending, cfg, 100, 59).action == WAIT
    assert decide(pending, cfg, 100, 60).action == HOLD
    assert decide(pending, RolloutConfig(step_timeout_s=60, on_timeout="rollback"), 100, 60).action == ROLLBACK
    assert decide({**good, "accuracy": {**good["accuracy"], "verdict": "better"}}, cfg, 10, 1).action == PROMOTE


def test_config_errors_name_every_problem():
    with pytest.raises(RolloutConfigError) as e:
        RolloutConfig.from_dict({"steps": [5, 1, 120], "guardrails": ["p99"], "on_timeout": "wait", "stepz": 1})
    text = str(e.value)
    assert "unknown key(s) ['stepz']" in text
    with pytest.raises(RolloutConfigError) as e:
        RolloutConfig.from_dict({"steps": [5, 1, 120], "guardrails": ["p99"], "on_timeout": "wait"})
    text = str(e.value)
    assert "every step must be in (0, 100]" in text and "strictly increasing" in text
    assert "unknown metric(s) ['p99']" in text and "on_timeout='wait'" in text
    with pytest.raises(RolloutConfigError, match=r"judge.margins: unknown metric\(s\) \['p99'\]"):
        RolloutConfig.from_dict({"judge": {"margins": {"p99": 1}}})
    cfg = RolloutConfig.from_dict({"judge": {"margins": {"latency_p99": 1.0}}})
    assert cfg.judge.margins.latency_p99 == 1.0 and cfg.steps == (1, 5, 25, 50, 100)


def test_step_weights_keep_the_other_arms_proportions():
    exp = experiment_from_dict({**SPEC, "arms": [*SPEC["arms"], {"name": "c2", "model": "m", "weight": 25}]})
    assert step_weights(exp, "cand", 20) == {"control": 64.0, "c2": 16.0, "cand": 20}


def test_rollback_through_a_postgresql_store(postgres_url):
    fill(postgres_url, cand_correct=0.3)
    out = rollout(postgres_url)
    assert out.result == ROLLBACK and out.reason.startswith("accuracy worse")
    last = revisions(postgres_url)[-1]
    assert (last.source, last.who, last.weights()) == ("rollout", "rollout", {"control": 100, "cand": 0})
