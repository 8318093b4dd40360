"""Experiment files: YAML and TOML with the same keys, and validation that reports every problem at once."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from experiments.errors import ExperimentError
from experiments.spec import GenerationTimeouts, Sticky, experiment_from_dict, load_experiment
from serving.router.cli import parse_router_config
from serving.router.config import RouterConfig
from tunestack.cli import dataclass_parser

ROOT = Path(__file__).parents[1]

YAML = """
name: sentiment-ab
upstream: http://127.0.0.1:8000
timeout_s: 1.5
sticky: {header: X-User-Id}
arms:
  - {name: control, model: sentiment, version: 1, weight: 70}
  - {name: treatment, model: sentiment, version: "2", weight: 30}
fallback: control
shadow: {name: shadow, model: sentiment, version: "3", fraction: 0.25}
"""

TOML = """
name = "sentiment-ab"
upstream = "http://127.0.0.1:8000"
timeout_s = 1.5
fallback = "control"
sticky = { header = "X-User-Id" }
shadow = { name = "shadow", model = "sentiment", version = "3", fraction = 0.25 }
[[arms]]
name = "control"
model = "sentiment"
version = 1
weight = 70
[[arms]]
name = "treatment"
model = "sentiment"
version = "2"
weight = 30
"""


def good() -> dict:
    return {"name": "ab", "arms": [{"name": "control", "model": "m", "version": "1", "weight": 1},
                                   {"name": "treatment", "model": "m", "version": "2", "weight": 1}]}


def test_yaml_and_toml_give_the_same_experiment(tmp_path):
    (tmp_path / "e.yaml").write_text(YAML)
    (tmp_path / "e.toml").write_text(TOML)
    a, b = load_experiment(tmp_path / "e.yaml"), load_experiment(tmp_path / "e.toml")
    assert a == b
    assert a.arms[0].version == "1"  # integers become version strings
    assert a.shares == {"control": 0.7, "treatment": 0.3}
    assert a.sticky.source == "header" and a.sticky.key == "X-User-Id"
    assert a.shadow.fraction == 0.25 and a.fallback == "control" and a.timeout_s == 1.5


def test_the_example_experiment_loads_and_upstream_can_be_overridden():
    exp = load_experiment(ROOT / "experiments/specs/sentiment-ab.yaml", upstream="http://127.0.0.1:9999")
    assert exp.arm_names == ("control", "treatment")
    assert [a.version for a in exp.arms] == ["1", "2"]
    assert exp.upstream == "http://127.0.0.1:9999"
    assert exp.sticky.key == "X-User-Id"


def test_every_problem_is_reported_at_once():
    bad = {"name": "bad name", "colour": "red", "timeout_s": -1, "fallback": "nobody",
           "sticky": {"cookie": "id"}, "shadow": {"model": "", "fraction": 2},
           "arms": [{"name": "a", "model": "m", "weight": -1}, {"name": "a", "model": "m", "version": "v2"}]}
    with pytest.raises(ExperimentError) as e:
        experiment_from_dict(bad)
    text = str(e.value)
    expected = ["unknown key(s) ['colour']", "name 'bad name'", "timeout_s", "fallback 'nobody'",
                "sticky source 'cookie'", "shadow: model", "shadow: fraction must be in (0, 1], got 2",
                "weight must be a number >= 0, got -1", "duplicated: ['a']", "version must be a string of digits"]
    for fragment in expected:
        assert fragment in text, fragment
    assert len(e.value.problems) >= len(expected)


def test_generation_timeouts_are_validated_and_survive_the_store_round_trip():
    arms = [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}]
    plain = experiment_from_dict({"name": "g", "arms": arms})
    assert plain.generation_timeouts == GenerationTimeouts() and "generation_timeouts" not in plain.to_dict()
    custom = experiment_from_dict({"name": "g", "arms": arms, "generation_timeouts": {"first_token_s": 5, "token_s": 2}})
    assert custom.generation_timeouts == GenerationTimeouts(first_token_s=5, token_s=2, completion_s=300.0)
    from experiments.store.sync import spec_of

    again = experiment_from_dict(spec_of(custom))  # as a store revision keeps it
    assert again.generation_timeouts == custom.generation_timeouts
    with pytest.raises(ExperimentError) as e:
        experiment_from_dict({"name": "g", "arms": arms,
                              "generation_timeouts": {"first_token_s": 0, "token_s": "ten", "idle_s": 3}})
    assert e.value.problems == [
        "generation_timeouts: unknown key(s) ['idle_s']; expected some of ['first_token_s', 'token_s', 'completion_s']",
        "generation_timeouts.first_token_s must be a number in (0, 3600] seconds, got 0",
        "generation_timeouts.token_s must be a number in (0, 3600] seconds, got 'ten'"]
    with pytest.raises(ExperimentError, match="generation_timeouts must be a mapping"):
        experiment_from_dict({"name": "g", "arms": arms, "generation_timeouts": 30})


def test_missing_and_malformed_parts():
    with pytest.raises(ExperimentError, match="missing required key 'name'"):
        experiment_from_dict({"arms": good()["arms"]})
    with pytest.raises(ExperimentError, match="at least 2 arms"):
        experiment_from_dict({"name": "x", "arms": good()["arms"][:1]})
    with pytest.raises(ExperimentError, match="weights sum to 0"):
        experiment_from_dict({**good(), "arms": [{**a, "weight": 0} for a in good()["arms"]]})
    with pytest.raises(ExperimentError, match="'arms' must be a list"):
        experiment_from_dict({"name": "x", "arms": {"control": 1}})
    with pytest.raises(ExperimentError, match="top level"):
        experiment_from_dict(["not", "a", "mapping"])
    with pytest.raises(ExperimentError, match="must be an http"):
        experiment_from_dict({**good(), "upstream": "localhost:8000"})


def test_a_treatment_cannot_exceed_its_lane():
    arms = [{"name": n, "model": "m", "weight": w} for n, w in [("c", 20), ("t1", 60), ("t2", 20)]]
    with pytest.raises(ExperimentError, match="treatment 't1' has share 0.600, over its lane of 0.500"):
        experiment_from_dict({"name": "x", "arms": arms})


def test_with_weights_validates_and_keeps_the_rest():
    exp = experiment_from_dict(good())
    new = exp.with_weights({"control": 10, "treatment": 90})
    assert new.shares == {"control": 0.1, "treatment": 0.9} and new.arms[1].version == "2"
    with pytest.raises(ExperimentError) as e:
        exp.with_weights({"control": -1, "other": 1})
    assert "unknown arm(s) ['other']" in str(e.value) and "missing weight for arm(s) ['treatment']" in str(e.value)
    with pytest.raises(ExperimentError, match="weight must be a number >= 0"):
        exp.with_weights({"control": "lots", "treatment": 1})


def test_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ExperimentError, match="file not found"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(ExperimentError, match="unknown file type '.json'"):
        load_experiment(tmp_path / "e.json")
    (tmp_path / "e.yaml").write_text("name: [unclosed")
    with pytest.raises(ExperimentError, match="cannot parse"):
        load_experiment(tmp_path / "e.yaml")


def test_router_config_validation_and_cli_mirror():
    with pytest.raises(ExperimentError) as e:
        RouterConfig(experiment="e.yaml", port=0, max_body_bytes=0, feedback_pending_s=0.5)
    assert "port must be in 1..65535" in str(e.value) and "max_body_bytes must be >= 1" in str(e.value)
    assert "feedback_pending_s must be in [1, 604800] seconds (a week), got 0.5" in str(e.value)
    parser = dataclass_parser(RouterConfig, config_file=False)
    assert set(parser.get_defaults().keys()) == {f.name for f in fields(RouterConfig)}
    config = parse_router_config(["--experiment", "e.yaml", "--max-body-bytes", "2048", "--feedback-pending-s", "30"])
    assert config.host == "127.0.0.1" and config.max_body_bytes == 2048 and config.feedback_pending_s == 30


def test_sticky_key_comes_from_the_named_header_or_parameter():
    headers = {"x-user-id": "u1"}.get  # names arrive lower case, as ASGI and gRPC metadata give them
    assert Sticky("header", "X-User-Id").key_of(headers, {"user": "p"}) == "u1"
    assert Sticky("header", "X-Other").key_of(headers, {}) is None
    assert Sticky("parameter", "user").key_of(headers, {"user": 42}) == "42"
    assert Sticky("parameter", "user").key_of(headers, {"user": ""}) is None
    assert Sticky(None).key_of(headers, {"user": "p"}) is None
