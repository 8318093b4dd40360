"""The ratio metrics' math against independent computations: the delete-one-unit jackknife, a cluster
bootstrap, a hand-made stratified table, an explicit loop over units, and coverage at every look."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.judge.ratio import Layout, contrast


def _table(rng: np.random.Generator, units: int, periods: int, switch: float = 0.0, heavy: bool = True):
    """Rows (unit, period) with a per-unit level: y = sum of n draws around the unit's level; ``heavy``:
    heavy-tailed activity (a few rows hold a large share of their arm and period). With ``switch``, that
    share of control units move to the treatment in the later periods (a ramp)."""
    arm0 = rng.random(units) < 0.5
    moves = (~arm0) & (rng.random(units) < switch)
    level = rng.lognormal(0, 0.6, units)
    rows = []
    for u in range(units):
        for p in range(periods):
            n = int(rng.poisson(1 + 3 * rng.pareto(2.0) if heavy else rng.gamma(2.0, 2.0)))
            if n == 0:
                continue
            arm = int(arm0[u] or (moves[u] and p > 0))
            x = level[u] * rng.lognormal(0, 0.3, n)
            rows.append((u, p, arm, x.sum(), float(n), (x * x).sum()))
    u, p, a, y, n, q = (np.array(c) for c in zip(*rows, strict=True))
    return u.astype(int), p.astype(int), a.astype(int), y, n, q


def _run(u, p, a, y, n, q, periods: int):
    layout = Layout.of((a * periods + p)[None], u, int(u.max()) + 1, 2, periods)
    return contrast(y[None], n[None], q[None], layout, 1)


def _diff(u, p, a, y, n, periods: int) -> float:
    """D by its definition: within-period ratio differences, weights n_c n_t / (n_c + n_t)."""
    num = den = 0.0
    for k in range(periods):
        sel = [(a == arm) & (p == k) for arm in (0, 1)]
        nc, nt = n[sel[0]].sum(), n[sel[1]].sum()
        if nc and nt:
            w = nc * nt / (nc + nt)
            num += w * (y[sel[1]].sum() / nt - y[sel[0]].sum() / nc)
            den += w
    return num / den


def test_variance_is_the_delete_one_unit_jackknife_within_one_period():
    rng = np.random.default_rng(0)
    u, p, a, y, n, q = _table(rng, 300, 1)
    c = _run(u, p, a, y, n, q, 1)
    d = _diff(u, p, a, y, n, 1)
    assert float(c.estimate[0]) == pytest.approx(d, rel=1e-12)
    jack = sum((_diff(u[u != i], p[u != i], a[u != i], y[u != i], n[u != i], 1) - d) ** 2 for i in np.unique(u))
    assert float(c.var[0]) > float(c.var_iid[0])  # clustered: the floor is not what we compare
    assert float(c.var[0]) == pytest.approx(jack, rel=1e-9)


def test_variance_matches_a_cluster_bootstrap_across_periods_and_switching_units():
    rng = np.random.default_rng(1)
    u, p, a, y, n, q = _table(rng, 600, 3, switch=0.4, heavy=False)  # small leverage: CR3 ~ CR0
    c = _run(u, p, a, y, n, q, 3)
    ids = np.unique(u)
    rows_of = {i: np.flatnonzero(u == i) for i in ids}
    reps = []
    for _ in range(1500):
        pick = rng.choice(ids, ids.size)
        idx = np.concatenate([rows_of[i] for i in pick])
        reps.append(_diff(u[idx], p[idx], a[idx], y[idx], n[idx], 3))
    boot = float(np.var(reps, ddof=1))
    assert float(c.var[0]) == pytest.approx(boot, rel=0.12)
    assert float(c.design_effect[0]) > 2  # and the independent-requests variance is far too small


def test_stratified_estimate_on_a_hand_made_table():
    # period 0: control 10/5 = 2.0 (n 5), treatment 9/3 = 3.0 (n 3); period 1: control 4/4 = 1.0, treatment 8/4 = 2.0
    u = np.array([0, 1, 2, 3, 4, 5])
    p = np.array([0, 0, 0, 1, 1, 1])
    a = np.array([0, 0, 1, 0, 1, 1])
    y = np.array([6.0, 4.0, 9.0, 4.0, 5.0, 3.0])
    n = np.array([3.0, 2.0, 3.0, 4.0, 2.0, 2.0])
    c = _run(u, p, a, y, n, y * y / n, 2)
    w0, w1 = 5 * 3 / 8, 4 * 4 / 8
    assert float(c.estimate[0]) == pytest.approx((w0 * 1.0 + w1 * 1.0) / (w0 + w1))
    assert float(c.weight[0]) == pytest.approx(w0 + w1)
    assert (float(c.n_control[0]), float(c.n_treatment[0])) == (9.0, 7.0)
    # pooling the periods would say 14/9 vs 17/7: a different, wrong, answer
    assert 17 / 7 - 14 / 9 != pytest.approx(float(c.estimate[0]))


def test_variance_sums_each_units_influence_over_all_its_rows():
    # unit 0 in the control in period 0 and the treatment in period 1 (a ramp); unit 1 served by both arms
    # in period 0 (a fallback); the rest in one arm
    u = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 7])
    p = np.array([0, 1, 0, 0, 0, 0, 1, 1, 0, 1])
    a = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    y = np.array([5.0, 7.0, 2.0, 9.0, 4.0, 3.0, 8.0, 1.0, 6.0, 2.0])
    n = np.array([2.0, 3.0, 1.0, 4.0, 2.0, 2.0, 3.0, 1.0, 3.0, 2.0])
    c = _run(u, p, a, y, n, 10 * y * y, 2)  # a large q: var_iid is not the floor here
    G = {(arm, k): (a == arm) & (p == k) for arm in (0, 1) for k in (0, 1)}
    N = {g: n[m].sum() for g, m in G.items()}
    R = {g: y[m].sum() / n[m].sum() for g, m in G.items()}
    w = {k: N[0, k] * N[1, k] / (N[0, k] + N[1, k]) for k in (0, 1)}
    W = sum(w.values())
    phi = np.zeros(8)
    for i in range(len(u)):
        g = (a[i], p[i])
        sign = 1 if a[i] == 1 else -1
        phi[u[i]] += sign * w[p[i]] / W * (y[i] - R[g] * n[i]) / N[g] / (1 - n[i] / N[g])
    assert float(c.var[0]) == pytest.approx(max(float((phi**2).sum()), float(c.var_iid[0])), rel=1e-12)
    assert float((phi**2).sum()) < float(c.var_iid[0])  # then the floor holds it up: check both sides
    c2 = _run(u, p, a, y, n, y * y / n, 2)
    assert float(c2.var[0]) == pytest.approx(float((phi**2).sum()), rel=1e-12)


def test_cs_covers_the_true_difference_at_every_look_on_clustered_traffic():
    rng = np.random.default_rng(2)
    B, U, n, alpha, effect = 400, 600, 6000, 0.05, 0.03
    looks = np.arange(300, n + 1, 300)
    b_idx = np.arange(B)[:, None]
    act = 1 + rng.pareto(1.5, (B, U))
    cum = np.cumsum(act, axis=1)
    cum = (cum / cum[:, -1:] + np.arange(B)[:, None]).ravel()
    who = np.minimum(np.searchsorted(cum, (rng.random((B, n)) + b_idx).ravel()).reshape(B, n) - b_idx * U, U - 1)
    arm = (rng.random((B, U)) < 0.5).astype(int)
    p_user = 0.9 * rng.beta(2, 3, (B, U)) + effect * arm  # mean 0.36 in the control, 0.39 in the treatment
    outcome = (rng.random((B, n)) < p_user[b_idx, who]).astype(float)
    layout = Layout.of(arm, np.arange(U), U, 2, 1)
    missed = np.zeros(B, dtype=bool)
    for L in looks:
        flat = (who[:, :L] + U * b_idx).ravel()
        ys = np.bincount(flat, weights=outcome[:, :L].ravel(), minlength=B * U).reshape(B, U)
        ns = np.bincount(flat, minlength=B * U).reshape(B, U).astype(float)
        _, low, high = contrast(ys, ns, None, layout, 1).interval(alpha, 1000)
        missed |= (low > effect) | (high < effect)
    assert missed.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / B), missed.mean()
