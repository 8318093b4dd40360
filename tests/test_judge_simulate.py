"""The proof by simulation, small: A/A runs on sticky heavy-tailed users and on a ramp with shared trends,
read at every look, keep the false-verdict rate <= alpha (allowing for simulation error) while the naive
request-level judgement of the same data does not; real differences and sample-ratio faults are found."""

from __future__ import annotations

import json

import pytest
from scipy import stats as sps

from experiments.judge import cli
from experiments.judge.config import JudgeConfig
from experiments.judge.simulate import SimulationSpec, simulate

ALPHA = 0.05
SIMS = 200
BOUND = sps.binom.ppf(0.99, SIMS, ALPHA) / SIMS
"""Fail only when the observed count is implausible for a true rate of alpha (one-sided binomial, 1 %)."""


@pytest.mark.parametrize(("scenario", "look_every"), [("aa-sticky", 250), ("aa-ramp", 500), ("aa", 250),
                                                    ("aa-generative", 250)])
def test_aa_any_false_verdict_rate_at_most_alpha_at_every_look(scenario, look_every):
    r = simulate(SimulationSpec(scenario=scenario, sims=SIMS, look_every=look_every, max_per_arm=5000, seed=11),
                 JudgeConfig(alpha=ALPHA))
    assert r["any_false_verdict_rate"] <= BOUND, r
    if scenario != "aa":
        # the same data judged per request with the periods pooled: far above alpha; a broken simulation
        # that never produced a difference would fail here
        assert r["naive"]["any_false_verdict_rate"] > 3 * ALPHA, r["naive"]


def test_generative_metrics_find_a_slower_decoder_and_only_it():
    r = simulate(SimulationSpec(scenario="itl-generative", sims=60, look_every=250, seed=5))
    assert r["power"] > 0.9 and r["any_false_verdict_rate"] <= 0.05, r
    assert "ttft_mean" in r["metrics_checked_for_false_verdicts"] and "itl_mean" not in r["metrics_checked_for_false_verdicts"]
    assert r["alpha_per_check"] == pytest.approx(ALPHA / 9)


def test_heavy_tailed_sticky_users_on_a_ramp_through_the_cli(capsys):
    code = cli.main(["judge", "simulate", "--scenario", "aa-ramp", "--users", "2000", "--activity", "pareto",
                     "--activity-index", "1.2", "--latency-sd", "0.35", "--label-sd", "1.8", "--difficulty-sd", "1.8",
                     "--sims", str(SIMS), "--look-every", "500", "--seed", "5", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["users"] == 2000 and r["steps"] == [0.05, 0.25, 0.5] and r["traffic"]["activity_index"] == 1.2
    assert r["any_false_verdict_rate"] <= BOUND, r
    assert r["naive"]["any_false_verdict_rate"] > 0.5, r["naive"]


def test_power_for_real_differences_and_a_sample_ratio_fault():
    errors = simulate(SimulationSpec(scenario="errors-sticky", sims=60, look_every=250, seed=3))
    assert errors["power"] >= 0.9 and errors["median_requests_to_detection"] <= 6000, errors
    labels = simulate(SimulationSpec(scenario="labels", sims=60, look_every=250, seed=4))
    assert labels["power"] >= 0.75, labels
    lost = simulate(SimulationSpec(scenario="srm", sims=60, look_every=250, seed=6, users=0, drop_t=0.2))
    assert lost["power"] >= 0.9, lost
    for r in (errors, labels, lost):
        assert r["any_false_verdict_rate"] <= 0.1, r


def test_cli_grid_prints_one_json_line_per_setting(capsys):
    code = cli.main(["judge", "simulate", "--scenario", "aa-sticky", "--grid", "power", "--sims", "4",
                     "--look-every", "100", "--max-per-arm", "300", "--json"])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["sticky"] for r in lines] == [False, True, False, True]
    assert all(r["looks"] == 3 and 0 <= r["any_false_verdict_rate"] <= 1 for r in lines)
    assert lines[1]["setting"].startswith("1,000 users") and lines[1]["users"] == 1000


def test_cli_rejects_unknown_scenario_and_grid(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["judge", "simulate", "--scenario", "aa,nope"])
    assert e.value.code == 2
    assert "scenario='nope': expected one of aa, p99" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["judge", "simulate", "--grid", "huge"])
    assert "grid='huge': expected one of sticky, ramp, power" in capsys.readouterr().err
