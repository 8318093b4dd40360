"""Sticky assignment: the same key keeps its arm, splits follow the weights, ramps only move keys
into the growing arm. 100,000 keys each."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.assignment import Assigner, bucket, buckets
from experiments.spec import Arm, Experiment

N = 100_000
KEYS = [f"user-{i}" for i in range(N)]


def experiment(*weights: float, name: str = "ab") -> Experiment:
    names = ["control"] + [f"t{i}" for i in range(1, len(weights))]
    return Experiment(name, tuple(Arm(n, "m", str(i + 1), w) for i, (n, w) in enumerate(zip(names, weights, strict=True))))


@pytest.fixture(scope="module")
def u() -> np.ndarray:
    return buckets("ab", KEYS)


def arms_of(exp: Experiment) -> np.ndarray:
    """The arm of every key, from the function the router calls per request (``Assigner.assign``)."""
    assigner = Assigner(exp)
    return np.array([assigner.assign(key, None) for key in KEYS])


def test_buckets_are_uniform_and_depend_on_the_experiment(u):
    counts, _ = np.histogram(u, bins=20, range=(0, 1))
    assert np.all(np.abs(counts / N - 0.05) < 0.004)
    other = buckets("another-experiment", KEYS)
    assert np.corrcoef(u, other)[0, 1] == pytest.approx(0, abs=0.02)  # experiments are independent


def test_same_key_same_arm_across_assigners_and_processes(u):
    exp = experiment(50, 50)
    first = [Assigner(exp).assign(k, random.Random(1)) for k in KEYS[:2000]]
    again = [Assigner(exp).assign(k, random.Random(2)) for k in KEYS[:2000]]  # rng unused with a key
    assert first == again
    # another interpreter (another router process, another hash seed) computes the same buckets
    code = "from experiments.assignment import bucket; print(repr([bucket('ab', f'user-{i}') for i in range(500)]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=str(Path(__file__).parents[1]))
    assert eval(out.stdout) == [bucket("ab", k) for k in KEYS[:500]]
    assert list(u[:500]) == [bucket("ab", k) for k in KEYS[:500]]


@pytest.mark.parametrize("weights", [(70, 30), (50, 50), (99, 1), (0.5, 0.25, 0.25), (40, 20, 20, 20), (100, 0)])
def test_split_within_one_percent_of_the_weights(weights):
    exp = experiment(*weights)
    arms = arms_of(exp)
    for name, share in exp.shares.items():
        assert abs(np.mean(arms == name) - share) < 0.01, (name, np.mean(arms == name), share)


def test_random_assignment_without_a_key_follows_the_weights():
    exp = experiment(70, 30)
    a, rng = Assigner(exp), random.Random(0)
    got = [a.assign(None, rng) for _ in range(20_000)]
    assert abs(got.count("t1") / len(got) - 0.3) < 0.01


def test_two_arm_ramp_is_monotone():
    steps = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0]
    previous = arms_of(experiment(1 - steps[0], steps[0]))
    for p, q in zip(steps, steps[1:], strict=False):
        current = arms_of(experiment(1 - q, q))
        moved_in = (previous == "control") & (current == "t1")
        moved_back = (previous == "t1") & (current == "control")
        assert moved_back.sum() == 0, f"{moved_back.sum()} keys moved back from t1 at {p} -> {q}"
        assert abs(moved_in.mean() - (q - p)) < 0.01, (p, q, moved_in.mean())
        previous = current


def test_two_arm_ramp_down_only_moves_keys_out_of_the_treatment():
    before, after = arms_of(experiment(60, 40)), arms_of(experiment(90, 10))
    assert not np.any((before == "control") & (after == "t1"))
    assert abs(np.mean((before == "t1") & (after == "control")) - 0.3) < 0.01


def test_multi_arm_growing_one_treatment_leaves_the_others_alone():
    before, after = arms_of(experiment(70, 15, 15)), arms_of(experiment(55, 15, 30))
    changed = before != after
    assert np.all(before[changed] == "control") and np.all(after[changed] == "t2")  # control -> t2 only
    assert np.all(after[before == "t1"] == "t1")  # t1 keeps every key
    assert abs(changed.mean() - 0.15) < 0.01


def test_weights_scale_does_not_matter():
    assert np.array_equal(arms_of(experiment(70, 30)), arms_of(experiment(0.7, 0.3)))
