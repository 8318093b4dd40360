"""Load test settings, shapes, the prediction check and Triton metric deltas: fast, no processes."""

from __future__ import annotations

import random

import pytest

from export.contract import CONTRACT
from loadtests.config import LoadTestConfig, LoadTestError, parse_timespan, read_settings_file
from loadtests.payloads import check_prediction, infer_body
from loadtests.profiles import spike_profile, steps_profile
from loadtests.triton_metrics import deltas, parse_metrics
from loadtests.users import text_order, window_pick, zipf_weights

LABELS = frozenset({"negative", "positive"})


def test_invalid_config_lists_every_problem():
    with pytest.raises(LoadTestError) as e:
        LoadTestConfig(target="trition", users=0, run_time="soon", shape="wave", feedback_fraction=2)
    message = str(e.value)
    for part in ("unknown target 'trition'", "users must be >= 1", "run_time 'soon'", "unknown shape 'wave'",
                 "feedback_fraction must lie in [0, 1]"):
        assert part in message
    with pytest.raises(LoadTestError) as e:
        LoadTestConfig(user_texts="slices", user_text_window=0, user_activity=-1)
    for part in ("unknown user_texts 'slices'; expected one of: shared, window", "user_text_window must lie in (0, 1]",
                 "user_activity must be >= 0"):
        assert part in str(e.value)


def test_settings_merge_command_line_wins(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.locust]\ntarget = "triton"\nusers = 8\nrun-time = "1m"\narrival-rate = 5\n')
    cfg = LoadTestConfig.from_settings(read_settings_file(pyproject), {"users": 3, "run_time": None})
    assert (cfg.target, cfg.users, cfg.run_time_s, cfg.arrival_rate, cfg.open_loop) == ("triton", 3, 60.0, 5.0, True)
    assert cfg.base_url == "http://127.0.0.1:8000"
    conf = tmp_path / "locust.conf"
    conf.write_text("# comment\nusers = 4\nshape = steps\n")
    assert LoadTestConfig.from_settings(read_settings_file(conf)).shape == "steps"
    with pytest.raises(LoadTestError, match="unknown setting 'userz'"):
        LoadTestConfig.from_settings({"userz": 1})


def test_locust_args_spell_out_every_locust_option():
    args = LoadTestConfig(users=5, arrival_rate=12.5, target="router").locust_args()
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--users"] == "5" and pairs["--spawn-rate"] == "5"  # 0 means all users at once
    assert pairs["--arrival-rate"] == "12.5" and pairs["--host"] == "http://127.0.0.1:8080"
    assert "--workers" not in pairs and "--out-dir" not in pairs  # the runner's own settings stay here


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("30s", 30), ("2m", 120), ("1h30m", 5400)])
def test_parse_timespan(text, seconds):
    assert parse_timespan(text) == seconds


def test_steps_profile_climbs_to_users_then_stops():
    counts = [steps_profile(t, users=8, run_time=40, steps=4) for t in (0, 9.9, 10, 25, 39.9, 40)]
    assert counts == [2, 2, 4, 6, 8, None]


def test_spike_profile_multiplies_inside_the_window():
    args = dict(users=5, run_time=100, multiplier=3, start=0.4, length=0.2)
    assert [spike_profile(t, **args) for t in (0, 39.9, 40, 59.9, 60, 100)] == [5, 5, 15, 15, 5, None]


def answer(probs, labels):
    return {"outputs": [{"name": CONTRACT.output_probabilities, "data": probs},
                        {"name": CONTRACT.output_label, "data": labels}]}


def test_infer_body_uses_the_contract_names():
    body = infer_body(["a fine film", "a dull mess"])
    assert body["inputs"][0]["name"] == CONTRACT.input_text and body["inputs"][0]["shape"] == [2, 1]
    assert {o["name"] for o in body["outputs"]} == {CONTRACT.output_probabilities, CONTRACT.output_label}


@pytest.mark.parametrize(("payload", "problem"), [
    (answer([0.2, 0.8, 0.6, 0.4], ["positive", "negative"]), None),
    (answer([0.2, 0.8], ["positive"]), "expected 2 label(s)"),
    (answer([0.2, 0.9, 0.6, 0.4], ["positive", "negative"]), "sums to 1.1000"),
    (answer([1.2, -0.2, 0.6, 0.4], ["positive", "negative"]), "not in [0, 1]"),
    (answer([0.2, 0.8, 0.6, 0.4], ["positive", "neutral"]), "unknown label(s) ['neutral']"),
    ({"outputs": [{"name": CONTRACT.output_label, "data": ["positive"]}]}, "lacks output(s)"),
])
def test_check_prediction(payload, problem):
    result = check_prediction(payload, 2, LABELS)
    assert result == problem if problem is None else problem in result


TRITON_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="sentiment",version="1"} %d
nv_inference_request_success{model="sentiment",version="2"} 50
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="sentiment",reason="BACKEND",version="1"} %d
nv_inference_request_failure{model="sentiment",reason="REJECTED",version="1"} 1
# TYPE nv_inference_count counter
nv_inference_count{model="sentiment",version="1"} %d
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="sentiment",version="1"} %d
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="sentiment",version="1"} %d
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="sentiment",version="1"} %d
"""


def test_triton_metric_deltas_per_version():
    before = parse_metrics(TRITON_METRICS % (100, 0, 100, 100, 200_000, 500_000))
    after = parse_metrics(TRITON_METRICS % (300, 2, 300, 150, 600_000, 1_500_000))
    (row,) = deltas(before, after)  # version 2 served nothing in between: left out
    assert (row["model"], row["version"], row["requests"], row["failures"]) == ("sentiment", "1", 200, 2)
    assert row["mean_batch_size"] == pytest.approx(200 / 50)
    assert row["queue_ms"] == pytest.approx(400_000 / 200 / 1000)
    assert row["compute_infer_ms"] == pytest.approx(1_000_000 / 200 / 1000)


def test_max_throughput_respects_the_p99_bound_and_errors():
    from workflows.peer_bench.run import max_throughput

    levels = [{"users": 1, "throughput_rps": 40.0, "p99_ms": 30.0, "error_rate": 0.0},
              {"users": 2, "throughput_rps": 70.0, "p99_ms": 60.0, "error_rate": 0.0},
              {"users": 4, "throughput_rps": 90.0, "p99_ms": 140.0, "error_rate": 0.0},  # over the bound
              {"users": 8, "throughput_rps": 95.0, "p99_ms": 90.0, "error_rate": 0.05}]  # too many errors
    assert max_throughput(levels, 100.0) == {"bound_ms": 100.0, "throughput_rps": 70.0, "users": 2, "p99_ms": 60.0}
    assert max_throughput(levels, 10.0)["throughput_rps"] is None


def test_each_user_draws_from_its_own_window_of_the_texts_sorted_by_label_then_length():
    rng = random.Random(0)
    labels = [("neg", "pos")[i % 2] for i in range(1000)]
    texts = ["x" * rng.randrange(5, 200) for _ in range(1000)]
    order = text_order(texts, labels)
    assert [labels[i] for i in order] == ["neg"] * 500 + ["pos"] * 500
    assert all(len(texts[a]) <= len(texts[b]) for a, b in zip(order[:499], order[1:500], strict=True))
    picks = {f"visitor-{k}": [window_pick(order, 50, f"visitor-{k}", rng) for _ in range(200)] for k in range(300)}
    for user, got in picks.items():
        assert len({order.index(i) for i in got}) <= 50 and max(order.index(i) for i in got) - min(
            order.index(i) for i in got) < 50, "a user's texts are one window of 50"
        assert got[:5] != picks["visitor-0"][:5] or user == "visitor-0"
    positive = sorted(sum(labels[i] == "pos" for i in got) / len(got) for got in picks.values())
    assert positive[30] < 0.05 and positive[-30] > 0.95, "users differ in label mix: most see one label only"
    # the window is placed by the id alone: another process (another rng) draws from the same window
    again = [window_pick(order, 50, "visitor-7", random.Random(9 + i)) for i in range(200)]
    both = [order.index(i) for i in again + picks["visitor-7"]]
    assert max(both) - min(both) < 50


def test_zipf_activity_makes_a_few_heavy_users():
    cum = zipf_weights(300, 1.0)
    assert len(cum) == 300 and cum[0] == 1.0 and cum[-1] == pytest.approx(sum(1 / k for k in range(1, 301)))
    draws = random.Random(1).choices(range(300), cum_weights=cum, k=30_000)
    top = draws.count(0) / len(draws)
    assert 0.15 < top < 0.17, top  # 1 / H_300 = 0.159
    assert len(set(draws)) > 250, "the tail of light users still arrives"
