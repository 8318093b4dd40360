"""The tuning search without a server: the objective, brute force's grid, hill-climb on a synthetic surface."""

from __future__ import annotations

import itertools

import pytest

from workflows.tune.config import TuneConfig, TuneError
from workflows.tune.search import OFF, Candidate, Measurement, Objective, Space, brute_force, hill_climb

SPACE = Space(instance_count=(1, 2, 3, 4), intra_op_threads=(1, 2, 4), max_queue_delay_us=(OFF, 0, 500, 2000),
              preferred_batch_sizes=((), (4, 8)), max_batch_size=(8, 64))


def level(load, tput, p99, errors=0.0, p50=None):
    return {"load": load, "throughput_rps": tput, "p50_ms": p50 or p99 / 2, "p99_ms": p99, "error_rate": errors}


def surface(c: Candidate) -> Measurement:
    """A synthetic closed-loop ramp: each user offers 25 req/s; throughput is capped by the config's capacity
    and P99 grows with the offered load over the capacity. Capacity is unimodal along each dimension (what a
    hill-climb assumes) and peaks at 2 instances x 2 threads with a 500 us window and max batch 64; 4 instances x 4 threads thrashes (P99 over any bound)."""
    capacity = 100 + 40 * (c.instance_count == 2) + 30 * (c.intra_op_threads == 2) + {OFF: 0, 0: 10, 500: 20, 2000: 15}[c.max_queue_delay_us]
    capacity -= 10 * abs(c.instance_count - 2) + 5 * (c.max_batch_size == 8)
    thrash = c.instance_count * c.intra_op_threads >= 16
    levels = []
    for users in range(1, 17):
        offered = users * 25.0
        levels.append(level(users, min(capacity, offered), 400.0 if thrash else 10.0 + 80.0 * offered / capacity))
    return Measurement(levels)


def test_objective_max_throughput_counts_only_levels_within_the_bound_and_without_errors():
    m = Measurement([level(4, 100, 30), level(8, 180, 90), level(12, 240, 140), level(16, 260, 80, errors=0.05)])
    assert Objective("max-throughput", p99_bound_ms=100).score(m) == 180
    assert Objective("max-throughput", p99_bound_ms=150).score(m) == 240
    assert Objective("max-throughput", p99_bound_ms=10).score(m) is None
    assert Objective().score(Measurement(error="did not load")) is None


def test_objective_min_p99_needs_the_rate_served():
    obj = Objective("min-p99", rate=20)
    assert obj.score(Measurement([level(20, 19.5, 12.5)])) == -12.5
    assert obj.score(Measurement([level(20, 10.0, 5.0)])) is None  # only half the rate came back
    assert obj.score(Measurement([level(20, 20.0, 5.0, errors=0.5)])) is None
    with pytest.raises(ValueError, match="needs a rate > 0"):
        Objective("min-p99")
    with pytest.raises(ValueError, match="unknown objective 'fastest'"):
        Objective("fastest")


def test_brute_force_enumerates_every_distinct_config_of_the_grid():
    seen = []
    result = brute_force(SPACE, lambda c: seen.append(c) or surface(c), Objective())
    # preferred sizes mean nothing without batching: (OFF, (4, 8)) collapses onto (OFF, ())
    distinct = {Candidate(*v).canonical() for v in itertools.product(
        SPACE.instance_count, SPACE.intra_op_threads, SPACE.max_queue_delay_us, SPACE.preferred_batch_sizes,
        SPACE.max_batch_size)}
    assert len(seen) == len(set(seen)) == len(distinct) == 4 * 3 * (1 + 3 * 2) * 2
    assert set(seen) == distinct
    best_by_hand = max(distinct, key=lambda c: Objective().score(surface(c)) or -1)
    assert Objective().score(surface(result.best)) == Objective().score(surface(best_by_hand))
    assert (result.best.instance_count, result.best.intra_op_threads, result.best.max_queue_delay_us) == (2, 2, 500)


def test_brute_force_respects_a_trial_budget():
    result = brute_force(SPACE, surface, Objective(), max_trials=5)
    assert len(result.trials) == 5 and result.stopped_by_budget


def test_hill_climb_finds_the_best_under_the_objective_in_fewer_trials():
    start = Candidate(1, 1, OFF, (), 64)
    result = hill_climb(SPACE, start, surface, Objective())
    best = brute_force(SPACE, surface, Objective())
    assert result.best_score == best.best_score
    assert (result.best.instance_count, result.best.intra_op_threads, result.best.max_queue_delay_us) == (2, 2, 500)
    assert result.best.max_batch_size == 64
    assert len(result.trials) < len(best.trials) / 3
    assert result.trials[0].candidate == start  # it starts from the published config
    numbers = [t.number for t in result.trials]
    assert numbers == sorted(numbers) and len({t.candidate for t in result.trials}) == len(result.trials)


def test_hill_climb_under_a_tight_bound_prefers_low_latency_over_throughput():
    # with P99 <= 50 ms only the low-load levels count: the best is the config whose P99 stays low longest
    result = hill_climb(SPACE, Candidate(1, 1, OFF, (), 64), surface, Objective(p99_bound_ms=50))
    assert result.best_score == max(Objective(p99_bound_ms=50).score(surface(c)) or -1 for c in SPACE.grid())


def test_hill_climb_stops_at_the_trial_budget():
    result = hill_climb(SPACE, Candidate(1, 1, OFF, (), 64), surface, Objective(), max_trials=3)
    assert len(result.trials) == 3 and result.stopped_by_budget
    assert result.best is not None


def test_hill_climb_leaves_an_infeasible_start():
    def failing_start(c: Candidate) -> Measurement:
        return Measurement(error="did not load") if c.instance_count == 1 else surface(c)

    result = hill_climb(SPACE, Candidate(1, 2, 500, (), 64), failing_start, Objective())
    assert result.trials[0].score is None and result.best.instance_count == 2


def test_the_start_is_added_to_the_space():
    space = SPACE.with_start(Candidate(5, 1, 1000, (16,), 32))
    assert 5 in space.instance_count and 1000 in space.max_queue_delay_us and (16,) in space.preferred_batch_sizes
    assert space.neighbours(Candidate(5, 1, 1000, (16,), 32))  # it can move from there


def test_tune_config_names_every_bad_value():
    with pytest.raises(TuneError) as e:
        TuneConfig(search="exhaustive", queue_delays_us="off,soon", instance_counts="0", objective="min-p99", rate=0)
    message = str(e.value)
    assert "unknown search 'exhaustive'" in message and "'soon' is not valid" in message
    assert "'0' is not valid" in message and "needs a rate > 0" in message
    space = TuneConfig(queue_delays_us="off,0,500", instance_counts="1,3", preferred_batch_sizes="4,8").space()
    assert space.max_queue_delay_us == (OFF, 0, 500) and space.instance_count == (1, 3)
    assert space.preferred_batch_sizes == ((), (4, 8))


def test_hill_climb_walks_towards_the_objective_when_no_neighbour_meets_it_yet():
    # P99 falls with every added instance; only 4 instances meet the 100 ms bound
    def slow(c: Candidate) -> Measurement:
        p99 = 400.0 / c.instance_count
        return Measurement([level(4, 50.0 * c.instance_count, p99)])

    result = hill_climb(SPACE, Candidate(1, 1, OFF, (), 64), slow, Objective())
    assert result.best.instance_count == 4 and result.best_score == 200.0
    assert [t.candidate.instance_count for t in result.trials if t.score is None][:1] == [1]
    nothing = hill_climb(SPACE, Candidate(1, 1, OFF, (), 64), slow, Objective(p99_bound_ms=10))
    assert nothing.best is None and nothing.best_score is None  # closeness steers; it never publishes a miss


def test_spinning_is_a_dimension_written_to_and_read_from_the_config():
    from export.config import ExportConfig
    from export.triton_config import python_model_config
    from workflows.tune.trial import candidate_of, trial_config

    space = TuneConfig(spinning="on,off").space()
    assert space.intra_op_spinning == (False, True)
    quiet = Candidate(1, 2, 0, (), 64)
    assert Candidate(1, 2, 0, (), 64, True) in space.neighbours(quiet) and "spinning" not in quiet.label()
    assert Candidate(1, 1, 0, (), 64, True).canonical() == Candidate(1, 1, 0, (), 64)  # one thread: no pool to spin
    assert Candidate(1, 1, 0, (), 64, True) not in space.neighbours(Candidate(1, 1, 0, (), 64))
    with pytest.raises(TuneError, match="'sometimes' is not valid"):
        TuneConfig(spinning="off,sometimes")
    published = python_model_config(ExportConfig(intra_op_threads=2, instance_count=1, intra_op_spinning=True), ["a", "b"])
    assert published.parameters["intra_op_spinning"].string_value == "1"
    assert candidate_of(published).intra_op_spinning is True
    off = trial_config(published, 3, Candidate(2, 1, OFF, (), 8, False))
    assert off.parameters["intra_op_spinning"].string_value == "0" and candidate_of(off) == Candidate(2, 1, OFF, (), 8)
    older = python_model_config(ExportConfig(), ["a", "b"])  # a config published before the parameter existed
    del older.parameters["intra_op_spinning"]
    assert candidate_of(older).intra_op_spinning is False
