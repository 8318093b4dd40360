"""The rollout controller against a real SQLite experiment store filled with answers and feedback (no router):
its decisions, the revisions it writes (the audit log), resuming after a restart, and its configuration."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from dataclasses import dataclass

import pytest
import yaml

from experiments.assignment import Assigner, bucket
from experiments.rollout.cli import run_rollout
from experiments.rollout.config import RolloutArgs, RolloutConfig, RolloutConfigError
from experiments.rollout.controller import RolloutController, parse_why, step_weights
from experiments.rollout.decision import HALT, HOLD, PROMOTE, ROLLBACK, WAIT, decide
from experiments.spec import experiment_from_dict, load_experiment
from experiments.store import open_store
from experiments.store.base import AnswerRow
from experiments.store.sync import spec_of

SPEC = {"name": "exp", "sticky": {"header": "X-User-Id"},
        "arms": [{"name": "control", "model": "m", "version": "1", "weight": 100},
                 {"name": "cand", "model": "m", "version": "2", "weight": 0}]}
SECTION = {"steps": [10, 50, 100], "min_step_requests": 20, "poll_s": 0.01, "step_timeout_s": 30,
           "judge": {"quantile": 0.95, "tune_n": 200,
                     "margins": {"error_rate": 0.05, "latency_p99": 0.1, "label_distribution": 0.2},
                     "min_samples": {"error_rate": 50, "latency_p99": 50, "latency_mean": 50, "accuracy": 50,
                                     "label_distribution": 50, "confidence_mean": 50}}}


@dataclass
class Traffic:
    """What a fleet of routers would write while the controller runs: answers of 1,000 sticky users (each
    arriving at random), assigned by each revision's weights exactly as the router does (``Assigner``),
    recorded in that revision's period, and feedback on every answer. The candidate can be less accurate or
    slower, and ``broken_split`` sends it that share of users whatever the weights say (an assignment bug)."""

    url: str
    cand_correct: float = 0.8
    cand_slowdown_ms: float = 0.0
    broken_split: float | None = None
    chunk: int = 100
    per_revision: int = 2000

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random(0)
        written: dict[int, int] = {}
        async with open_store(self.url) as store:
            while not stop.is_set():
                rev = await store.latest_revision("exp")
                if written.get(rev.revision, 0) < self.per_revision:
                    await self._chunk(store, rev, rng, written.get(rev.revision, 0))
                    written[rev.revision] = written.get(rev.revision, 0) + self.chunk
                await asyncio.sleep(0.002)

    async def _chunk(self, store, rev, rng: random.Random, first: int) -> None:
        assigner = Assigner(experiment_from_dict(rev.spec))
        rows, truth = [], {}
        for i in range(first, first + self.chunk):
            user = f"user{rng.randrange(1000)}"
            arm = assigner.assign(user, rng)
            if self.broken_split is not None:
                arm = "cand" if bucket("exp", user) < self.broken_split else "control"
            label = rng.choice(("pos", "neg"))
            slow, p = (self.cand_slowdown_ms, self.cand_correct) if arm == "cand" else (0.0, 0.8)
            rid = f"r{rev.revision}-{i}"
            rows.append(AnswerRow("exp", rid, arm, arm, "1", user, (5 + rng.expovariate(1.0) + slow) / 1000,
                                  (label,), time.time(), (), rev.revision))
            truth[rid] = label if rng.random() < p else ("neg" if label == "pos" else "pos")
        await store.write_batch(rows)
        for rid, label in truth.items():  # the store joins each to its answer: arm, unit, period, correct
            await store.add_feedback("exp", rid, (label,))


def first_revision(url: str) -> None:
    """Revision 1: the experiment file, as a router's first start stores it (the candidate at 0 %)."""

    async def work() -> None:
        async with open_store(url) as store:
            await store.add_revision("exp", spec_of(experiment_from_dict(SPEC)), "file", "file exp.yaml", "first start")

    asyncio.run(work())


def revisions(url: str) -> list:
    async def work():
        async with open_store(url) as store:
            return await store.revisions("exp", 100)

    return asyncio.run(work())


def rollout(url: str, traffic: Traffic | None = None, section: dict | None = None):
    """Run the controller to its end while ``traffic`` (default: equivalent arms) writes to the store."""
    async def work():
        stop = asyncio.Event()
        feed = asyncio.create_task((traffic or Traffic(url)).run(stop))
        try:
            async with open_store(url) as store:
                return await RolloutController(store, "exp", RolloutConfig.from_dict(section or SECTION)).run()
        finally:
            stop.set()
            await feed

    return asyncio.run(work())


@pytest.fixture
def url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'exp.store.sqlite'}"
    first_revision(url)
    return url


def test_equivalent_arms_are_promoted_to_100_percent_through_the_store(url):
    out = rollout(url)
    assert out.result == "complete" and out.step == 3 and out.percent == 100, out.reason
    revs = revisions(url)
    ours = [r for r in revs if r.source == "rollout"]
    assert [r.who for r in ours] == ["rollout"] * 4
    assert [parse_why(r.why)[2] for r in ours] == ["start", PROMOTE, PROMOTE, "complete"]
    assert [r.weights()["cand"] for r in ours] == [10, 50, 100, 100]
    assert [r.weights()["control"] for r in ours] == [90, 50, 0, 0]
    assert "latency_p99 equivalent within margin" in ours[1].why
    assert out.looks and {look.sample_ratio for look in out.looks} == {"no mismatch detected"}
    units = out.verdicts["sample_ratio"]["units"]
    assert units["cand"]["observed"] > 0 and units["control"]["observed"] > 0


def test_worse_accuracy_rolls_back_at_the_first_step(url):
    out = rollout(url, Traffic(url, cand_correct=0.3))
    assert (out.result, out.step, out.percent) == (ROLLBACK, 1, 0.0)
    assert out.reason.startswith("accuracy worse")
    last = revisions(url)[-1]
    assert last.source == "rollout" and last.weights() == {"control": 100, "cand": 0}
    assert parse_why(last.why) == (1, 10.0, ROLLBACK)
    assert 0 < out.treatment_users <= out.treatment_requests  # exposure counted from the store


def test_slower_candidate_rolls_back_on_p99(url):
    out = rollout(url, Traffic(url, cand_slowdown_ms=40.0))
    assert out.result == ROLLBACK and "latency_p99 worse" in out.reason, out.reason
    p99 = out.looks[-1].metrics["latency_p99"]
    assert p99["threshold_ms"] is not None and p99["low"] > 0.5  # nearly every slow answer is past the threshold


def test_a_sample_ratio_mismatch_halts_where_it_stands_and_the_audit_log_says_why(url):
    """An assignment bug sends the candidate half the users while the weights say 10 %: the judge finds the
    mismatch, and the controller neither promotes nor rolls back -- the weights stay, a person decides."""
    out = rollout(url, Traffic(url, broken_split=0.5))
    assert (out.result, out.step, out.percent) == ("halted", 1, 10.0), out.reason
    assert out.verdicts["sample_ratio"]["verdict"] == "sample ratio mismatch"
    last = revisions(url)[-1]
    assert (last.source, last.who) == ("rollout", "rollout")
    assert last.weights() == {"control": 90, "cand": 10}, "a halt keeps the weights where they are"
    assert parse_why(last.why) == (1, 10.0, HALT)
    assert "sample ratio mismatch: control" in last.why and "cand" in last.why and "a person decides" in last.why
    again = rollout(url)  # a restarted controller reports the halt, it does not resume the ramp
    assert again.result == "halted" and again.revisions == []


def test_restart_resumes_at_the_stored_step_and_a_finished_rollout_is_not_repeated(url):
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
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "rollout": SECTION}))
    assert load_experiment(path).name == "exp"  # the router ignores the section

    async def with_traffic():
        stop = asyncio.Event()
        feed = asyncio.create_task(Traffic(url).run(stop))
        try:
            return await asyncio.to_thread(run_rollout, RolloutArgs(experiment=str(path), steps=("50", "100"),
                                                                    store=url, out_dir=str(tmp_path)))
        finally:
            stop.set()
            await feed

    out, md = asyncio.run(with_traffic())
    assert out.result == "complete" and out.steps == [50.0, 100.0]
    data = json.loads((md.parent / "rollout.json").read_text())
    assert data["outcome"]["result"] == "complete" and data["config"]["steps"] == [50.0, 100.0]
    assert (md.parent / "weights.png").stat().st_size > 0 and (md.parent / "intervals.png").stat().st_size > 0
    text = md.read_text()
    assert "**complete** at step 2/2" in text and "| latency p99 | share of answers slower than" in text
    assert "### Sample ratio: **no mismatch detected**" in text


def test_a_success_metric_found_better_once_carries_the_ramp_to_completion(url, monkeypatch):
    """Scripted judge: accuracy "better" at the first look only, then "no decision yet" (as at 100 %, where the
    control gets no new data and the interval can slip back): the ramp still completes."""
    looks = []

    async def verdicts(self, exp):
        looks.append(len(looks))
        verdict = "better" if len(looks) == 1 else "no decision yet"
        metric = {"low": -1, "high": 1, "unit": "", "n_control": 9, "n_treatment": 9}
        metrics = {n: {**metric, "verdict": "equivalent within margin"} for n in ("error_rate", "latency_p99")}
        metrics["accuracy"] = {**metric, "verdict": verdict}
        return {"sample_ratio": {"verdict": "no mismatch detected"}, "treatments": {"cand": {"metrics": metrics}}}

    monkeypatch.setattr(RolloutController, "_verdicts", verdicts)
    section = {**SECTION, "steps": [50, 100], "guardrails": ["error_rate", "latency_p99"],
               "success_metrics": ["accuracy"], "step_timeout_s": 600}
    out = rollout(url, section=section)
    assert out.result == "complete" and out.step == 2, out.reason
    assert out.found_better == ["accuracy"] and len(looks) >= 2
    assert [look.metrics["accuracy"]["verdict"] for look in out.looks][-1] == "no decision yet"
    assert out.reason.endswith("accuracy found better at an earlier look")


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
    must_win = RolloutConfig(min_step_requests=10, step_timeout_s=60, success_metrics=("accuracy",))
    waiting = decide(good, must_win, 10, 1)
    assert waiting.action == WAIT and waiting.failing == ("accuracy",), "no worse is not enough: it must be better"
    assert decide({**good, "accuracy": {**good["accuracy"], "verdict": "better"}}, must_win, 10, 1).action == PROMOTE
    assert decide(good, must_win, 10, 60).action == HOLD, "never found better: the step times out"
    stands = decide(good, must_win, 10, 1, found_better=frozenset({"accuracy"}))
    assert stands.action == PROMOTE, "found better at an earlier look: a later 'no decision yet' does not undo it"
    assert stands.reason.endswith("; accuracy found better at an earlier look")
    assert decide(worse, must_win, 10, 1, found_better=frozenset({"accuracy"})).action == ROLLBACK, "worse still rolls back"
    assert decide(good, must_win, 9, 1, found_better=frozenset({"accuracy"})).action == WAIT, "the step's requests"
    assert decide(worse, dataclasses.replace(must_win, rollback_on_accuracy=False), 0, 0).action == ROLLBACK
    split = {"verdict": "no mismatch detected", "units_evalue": 1.2, "units_threshold": 280.0,
             "units": {"control": {"observed_share": 0.9, "expected_share": 0.9}},
             "requests": {"control": {"observed_share": 0.9, "expected_share": 0.9}}}
    assert decide(good, cfg, 10, 1, split).action == PROMOTE
    mismatch = {**split, "verdict": "sample ratio mismatch", "units_evalue": 1e6,
                "units": {"control": {"observed_share": 0.5, "expected_share": 0.9},
                          "cand": {"observed_share": 0.5, "expected_share": 0.1}}}
    halted = decide(worse, cfg, 0, 0, mismatch)
    assert halted.action == HALT, "a mismatch voids every verdict: not even a rollback"
    assert halted.reason.startswith("sample ratio mismatch: control 50.0 % of new users (expected 90.0 %), "
                                    "cand 50.0 % of new users (expected 10.0 %); control 90.0 % of requests")


def test_config_errors_name_every_problem():
    with pytest.raises(RolloutConfigError) as e:
        RolloutConfig.from_dict({"steps": [5, 1, 120], "guardrails": ["p99"], "on_timeout": "wait", "stepz": 1})
    text = str(e.value)
    assert "unknown key(s) ['stepz']" in text
    with pytest.raises(RolloutConfigError, match=r"success_metrics: \['label_distribution', 'acc'\] cannot be found"):
        RolloutConfig.from_dict({"success_metrics": ["label_distribution", "acc"]})
    assert RolloutConfig.from_dict({"success_metrics": ["accuracy"]}).watched == (
        "error_rate", "latency_p99", "label_distribution", "accuracy")
    with pytest.raises(RolloutConfigError) as e:
        RolloutConfig.from_dict({"steps": [5, 1, 120], "guardrails": ["p99"], "on_timeout": "wait"})
    text = str(e.value)
    assert "every step must be in (0, 100]" in text and "strictly increasing" in text
    assert "unknown metric(s) ['p99']" in text and "on_timeout='wait'" in text
    with pytest.raises(RolloutConfigError, match=r"judge.margins: unknown metric\(s\) \['p99'\]"):
        RolloutConfig.from_dict({"judge": {"margins": {"p99": 1}}})
    with pytest.raises(RolloutConfigError, match=r"margins.latency_p99=5.0: expected a difference of shares in \[0, 1\]"):
        RolloutConfig.from_dict({"judge": {"margins": {"latency_p99": 5.0}}})  # milliseconds are refused
    cfg = RolloutConfig.from_dict({"judge": {"margins": {"latency_p99": 0.02}}})
    assert cfg.judge.margins.latency_p99 == 0.02 and cfg.steps == (1, 5, 25, 50, 100)


def test_step_weights_keep_the_other_arms_proportions():
    exp = experiment_from_dict({**SPEC, "arms": [*SPEC["arms"], {"name": "c2", "model": "m", "weight": 25}]})
    assert step_weights(exp, "cand", 20) == {"control": 64.0, "c2": 16.0, "cand": 20}


def test_rollback_through_a_postgresql_store(postgres_url):
    first_revision(postgres_url)
    out = rollout(postgres_url, Traffic(postgres_url, cand_correct=0.3))
    assert out.result == ROLLBACK and out.reason.startswith("accuracy worse")
    last = revisions(postgres_url)[-1]
    assert (last.source, last.who, last.weights()) == ("rollout", "rollout", {"control": 100, "cand": 0})
