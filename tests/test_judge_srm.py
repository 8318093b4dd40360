"""The sample-ratio check: the units' e-value against the beta-binomial closed form and Ville's bound, and
the judge on a ramp through the router's own assignment: a matching split is not flagged, faults are."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.special import betaln

from experiments.assignment import Assigner
from experiments.judge import Judge, srm
from experiments.spec import Arm, Experiment


def test_two_arm_evalue_is_the_beta_binomial_mixture_per_period_multiplied():
    c = 50.0
    counts = np.array([[30.0, 12.0], [50.0, 45.0]])  # (period, arm): control, treatment
    shares = np.array([[0.75, 0.25], [0.5, 0.5]])
    want = 0.0
    for (xc, xt), (tc, tt) in zip(counts, shares, strict=True):
        want += (betaln(c * tt + xt, c * tc + xc) - betaln(c * tt, c * tc) - xt * math.log(tt) - xc * math.log(tc))
    assert float(srm.units_log_evalue(counts, shares, c)) == pytest.approx(want, rel=1e-12)
    # an arm with share 0 that gets a unit: impossible under the weights; one without units takes no part
    assert srm.units_log_evalue(np.array([[5.0, 1.0]]), np.array([[1.0, 0.0]]), c) == math.inf
    assert float(srm.units_log_evalue(np.array([[5.0, 0.0]]), np.array([[1.0, 0.0]]), c)) == 0.0


def test_units_evalue_rarely_ever_reaches_one_over_alpha_under_the_weights():
    rng = np.random.default_rng(0)
    sims, alpha, c = 2000, 0.05, srm.concentration(2000, 0.05)
    shares = np.array([[0.9, 0.05, 0.05], [0.6, 0.2, 0.2], [0.4, 0.3, 0.3]])
    crossed = np.zeros(sims, dtype=bool)
    counts = np.zeros((sims, 3, 3))
    for p in range(3):  # three periods of 600 new units, looked at every 20
        for _ in range(30):
            counts[:, p] += rng.multinomial(20, shares[p], sims)
            crossed |= srm.units_log_evalue(counts, shares, c) >= math.log(1 / alpha)
    assert crossed.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / sims)


def _ramp(fault: str | None, seed: int) -> tuple[Judge, int]:
    """30,000 requests of 3,000 sticky users (Pareto activity, index 3) through the router's assignment,
    ramped 5 -> 25 -> 50 %; ``fault``: ``drop`` loses 20 % of the treatment's requests, ``skew`` assigns as
    if the treatment had 8 points more than its configured weight. Returns the judge and the users seen."""
    rng = np.random.default_rng(seed)
    act = 1 + rng.pareto(3.0, 3000)
    users = rng.choice(3000, 30000, p=act / act.sum())
    j = Judge(arms=("control", "t"), weights={"control": 95, "t": 5})
    for step, share in enumerate((5, 25, 50)):
        if step:
            j.weights_changed({"control": 100 - share, "t": share})
        routed = share + (8 if fault == "skew" else 0)
        assigner = Assigner(Experiment("exp", (Arm("control", "m", "1", 100 - routed), Arm("t", "m", "2", routed))))
        for u in users[step * 10000:(step + 1) * 10000]:
            arm = assigner.assign(f"user-{u}", random.Random(0))
            if fault == "drop" and arm == "t" and rng.random() < 0.20:
                continue
            j.answered(arm, 10.0, unit=f"user-{u}")
    return j, len(np.unique(users))


def test_a_matching_split_across_a_ramp_is_not_a_mismatch():
    j, seen = _ramp(None, 1)
    v = j.report()
    s = v.sample_ratio
    assert s.verdict == "no mismatch detected" and v.headline.startswith("No sample ratio mismatch")
    assert s.units_evalue < 1 / s.alpha
    assert s.requests["t"]["low"] <= 0 <= s.requests["t"]["high"]
    # users who moved control -> t as the weight rose are counted once, where first seen
    assert s.units["t"]["observed"] + s.units["control"]["observed"] == seen
    assert abs(s.units["t"]["observed_share"] - s.units["t"]["expected_share"]) < 0.03


def test_lost_requests_and_a_skewed_assignment_are_mismatches():
    dropped = _ramp("drop", 2)[0].report()
    assert dropped.sample_ratio.verdict == "sample ratio mismatch"
    assert dropped.sample_ratio.requests["t"]["high"] < 0  # the treatment has fewer requests than its share
    assert dropped.headline.startswith("Sample ratio mismatch:")
    skewed = _ramp("skew", 3)[0].report()
    assert skewed.sample_ratio.verdict == "sample ratio mismatch"
    assert skewed.sample_ratio.units_evalue >= skewed.sample_ratio.units_threshold
