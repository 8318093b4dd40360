"""Proof by simulation: the judge read at every look, against the old fixed-horizon tests read the same way.

Each simulated experiment has two arms with a 50/50 split: the ``i``-th requests of both arms arrive at
the same time ``i``. At every ``look_every`` requests per arm, up to ``max_per_arm``, both the judge and
the router's old tests (``fixed.py``) are read. The data:

* latency (ms) = ``median * exp(load_i + sigma Z) * T``: ``load_i`` is one AR(1) process shared by both
  arms (the load level drifts; successive requests are correlated), ``Z`` standard normal, and ``T`` a
  heavy tail: with probability ``tail_prob`` a ``1 + Pareto(tail_index)`` factor (index 1.5: infinite
  variance);
* server errors, predicted labels (two) and feedback (one outcome per request) are Bernoulli draws; the
  top-class confidence is Beta(8, 2).

``aa`` draws both arms from the same model: any "better", "worse" or "different" is false, and
``any_false_verdict_rate`` (runs with at least one, on any metric at any look) must stay <= alpha. The
other scenarios change one thing in the treatment and report the power (runs where the right verdict came
by ``max_per_arm``) and the median number of requests (both arms) until it came.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import signal
from scipy import stats as sps

from experiments.judge import boundaries, fixed
from experiments.judge import metrics as m
from experiments.judge.config import HIGHER_IS_BETTER, METRICS, JudgeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scenario:
    """Both arms' data model; a treatment field differing from its control field is the injected effect."""

    description: str
    target: str | None = None
    """The metric that should detect the effect (``None``: A/A)."""
    expected: int = m.WORSE
    """The verdict code that counts as a detection."""
    median_ms: float = 10.0
    sigma: float = 0.25
    load_sd: float = 0.15
    load_phi: float = 0.998
    tail_prob: float = 0.005
    tail_index: float = 1.5
    latency_scale_t: float = 1.0
    error_rate_c: float = 0.002
    error_rate_t: float = 0.002
    accuracy_c: float = 0.85
    accuracy_t: float = 0.85
    label_share_c: float = 0.5
    label_share_t: float = 0.5


SCENARIOS = {
    "aa": Scenario("A/A: both arms identical"),
    "p99": Scenario("p99 latency +20 % (every latency x1.2)", "latency_p99", latency_scale_t=1.2),
    "accuracy": Scenario("accuracy -3 points (0.85 -> 0.82)", "accuracy", accuracy_t=0.82),
    "errors": Scenario("server-error rate 0 -> 2 %", "error_rate", error_rate_c=0.0, error_rate_t=0.02),
    "labels": Scenario("label shift: positive share 0.50 -> 0.55", "label_distribution", m.DIFFERENT,
                       label_share_t=0.55),
}
"""The scenarios ``python -m serving judge simulate --scenario`` runs."""

AFFECTED = {"aa": (), "p99": ("latency_mean", "latency_p99"), "accuracy": ("accuracy",), "errors": ("error_rate",),
            "labels": ("label_distribution",)}
"""Metrics whose verdict is not false in a scenario (its effect moves them)."""

OLD_METRICS = ("latency_p99", "latency_mean", "label_distribution", "accuracy")
"""The metrics the router's old fixed-horizon report tested (at ``alpha`` each)."""


def _latencies(sc: Scenario, rng: np.random.Generator, sims: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    innov = rng.standard_normal((sims, n)) * sc.load_sd * math.sqrt(1 - sc.load_phi**2)
    start = rng.standard_normal((sims, 1)) * sc.load_sd
    load, _ = signal.lfilter([1.0], [1.0, -sc.load_phi], innov, axis=1, zi=start * sc.load_phi)
    arms = []
    for scale in (1.0, sc.latency_scale_t):
        tail = np.where(rng.random((sims, n)) < sc.tail_prob, 1 + rng.pareto(sc.tail_index, (sims, n)), 1.0)
        arms.append(sc.median_ms * scale * np.exp(load + sc.sigma * rng.standard_normal((sims, n))) * tail)
    return arms[0], arms[1]


def _prefix(x: np.ndarray, looks: np.ndarray) -> np.ndarray:
    """Sums of the first ``n`` values per row, for each ``n`` in ``looks``: shape (sims, looks)."""
    return np.cumsum(x, axis=1, dtype=np.float64)[:, looks - 1]


def _p99_codes(lat_c, lat_t, looks, cfg: JudgeConfig, a: float) -> np.ndarray:
    low, high = np.full((len(lat_c), len(looks)), -np.inf), np.full((len(lat_c), len(looks)), np.inf)
    for j, n in enumerate(looks):
        lo, hi = boundaries.quantile_cs_ranks(int(n), cfg.quantile, a / 2, float(cfg.tune_n))
        if lo < 1 or hi > n:
            continue
        pc, pt = np.partition(lat_c[:, :n], [lo - 1, hi - 1], axis=1), np.partition(lat_t[:, :n], [lo - 1, hi - 1], axis=1)
        low[:, j], high[:, j] = pt[:, lo - 1] - pc[:, hi - 1], pt[:, hi - 1] - pc[:, lo - 1]
    enough = looks >= cfg.min_samples.latency_p99
    return m.verdict_codes(low, high, cfg.margins.latency_p99, enough, HIGHER_IS_BETTER["latency_p99"])


def _old_signs(lat_c, lat_t, lab_c, lab_t, acc_c, acc_t, looks, alpha: float) -> dict[str, np.ndarray]:
    """Significant differences by the old tests at every look: sign (+1/-1) or 0, shape (sims, looks)."""
    n = looks.astype(np.float64)
    p99 = np.stack([fixed.quantile_diff_significant(np.sort(lat_c[:, :k], axis=1), np.sort(lat_t[:, :k], axis=1),
                                                    0.99, alpha) for k in looks], axis=1)
    mean = fixed.welch_significant(n, _prefix(lat_c, looks), _prefix(lat_c**2, looks), _prefix(lat_t, looks),
                                   _prefix(lat_t**2, looks), alpha)
    pos_c, pos_t = _prefix(lab_c, looks), _prefix(lab_t, looks)
    labels = fixed.chi_square_significant(np.stack([pos_c, n - pos_c], -1), np.stack([pos_t, n - pos_t], -1), alpha)
    acc = fixed.newcombe_significant(_prefix(acc_c, looks), n, _prefix(acc_t, looks), n, alpha)
    return {"latency_p99": p99, "latency_mean": mean, "label_distribution": labels.astype(np.float64),
            "accuracy": acc}


def simulate_chunk(name: str, sims: int, looks: np.ndarray, cfg: JudgeConfig, seed: np.random.SeedSequence,
                   old_tests: bool = True) -> dict[str, np.ndarray]:
    """Verdict codes per metric, shape (sims, looks), for ``sims`` runs of scenario ``name``.

    With ``old_tests``, also ``old:<metric>``: the sign of a significant difference by the old tests.
    """
    sc, rng, n_max = SCENARIOS[name], np.random.default_rng(seed), int(looks[-1])
    a = cfg.alpha_per_metric()
    lat_c, lat_t = _latencies(sc, rng, sims, n_max)
    err_c, err_t = (rng.random((sims, n_max)) < p for p in (sc.error_rate_c, sc.error_rate_t))
    lab_c, lab_t = (rng.random((sims, n_max)) < p for p in (sc.label_share_c, sc.label_share_t))
    acc_c, acc_t = (rng.random((sims, n_max)) < p for p in (sc.accuracy_c, sc.accuracy_t))
    conf_c, conf_t = rng.beta(8, 2, (sims, n_max)), rng.beta(8, 2, (sims, n_max))
    n = np.broadcast_to(looks.astype(np.float64), (sims, len(looks)))
    out: dict[str, np.ndarray] = {}

    def interval(name_: str, low, high):
        enough = n >= getattr(cfg.min_samples, name_)
        out[name_] = m.verdict_codes(low, high, getattr(cfg.margins, name_), enough, HIGHER_IS_BETTER[name_])

    _, low, high = m.proportion_diff_cs(_prefix(err_c, looks), n, _prefix(err_t, looks), n, a)
    interval("error_rate", low, high)
    cc, ct = np.minimum(lat_c, cfg.latency_cap_ms), np.minimum(lat_t, cfg.latency_cap_ms)
    _, low, high = m.mean_diff_cs(n, _prefix(cc, looks), _prefix(cc**2, looks), n, _prefix(ct, looks),
                                  _prefix(ct**2, looks), a, cfg.tune_n)
    interval("latency_mean", low, high)
    out["latency_p99"] = _p99_codes(lat_c, lat_t, looks, cfg, a)
    _, low, high = m.mean_diff_cs(n, _prefix(acc_c, looks), _prefix(acc_c, looks), n, _prefix(acc_t, looks),
                                  _prefix(acc_t, looks), a, cfg.tune_n, bernoulli=True)
    interval("accuracy", low, high)
    pos_c, pos_t = _prefix(lab_c, looks), _prefix(lab_t, looks)
    out["label_distribution"] = m.label_share_codes(
        np.stack([pos_c, n - pos_c], -1), n, np.stack([pos_t, n - pos_t], -1), n, a, cfg.tune_n,
        cfg.margins.label_distribution, n >= cfg.min_samples.label_distribution)[0]
    _, low, high = m.mean_diff_cs(n, _prefix(conf_c, looks), _prefix(conf_c**2, looks), n, _prefix(conf_t, looks),
                                  _prefix(conf_t**2, looks), a, cfg.tune_n)
    interval("confidence_mean", low, high)
    if old_tests:
        for k, v in _old_signs(lat_c, lat_t, lab_c, lab_t, acc_c, acc_t, looks, cfg.alpha).items():
            out[f"old:{k}"] = v
    return out


@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate (``python -m serving judge simulate`` mirrors it)."""

    scenario: str = "aa"
    """One of: aa, p99, accuracy, errors, labels."""
    sims: int = 1000
    """Simulated experiments."""
    look_every: int = 50
    """Requests per arm between two looks."""
    max_per_arm: int = 5000
    """Requests per arm at the last look."""
    seed: int = 0
    """Seed of the whole simulation (same seed, same result)."""
    workers: int = 1
    """Processes to run chunks of experiments in."""
    chunk: int = 50
    """Experiments per chunk (memory: about chunk x max_per_arm x 200 bytes)."""
    old_tests: bool = True
    """Also read the router's old fixed-horizon tests at the same looks."""

    def __post_init__(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario={self.scenario!r}: expected one of {', '.join(SCENARIOS)}")
        for name in ("sims", "look_every", "workers", "chunk"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: expected >= 1")
        if self.max_per_arm < self.look_every:
            problems.append(f"max_per_arm={self.max_per_arm}: expected >= look_every ({self.look_every})")
        if problems:
            raise ValueError("invalid simulation: " + "; ".join(problems))

    def looks(self) -> np.ndarray:
        return np.arange(self.look_every, self.max_per_arm + 1, self.look_every)


def run_chunks(spec: SimulationSpec, cfg: JudgeConfig, progress=None) -> dict[str, np.ndarray]:
    """All runs of ``spec``, in chunks (over ``spec.workers`` processes); codes stacked over runs."""
    looks = spec.looks()
    sizes = [min(spec.chunk, spec.sims - i) for i in range(0, spec.sims, spec.chunk)]
    seeds = np.random.SeedSequence(spec.seed).spawn(len(sizes))
    jobs = [(spec.scenario, s, looks, cfg, sd, spec.old_tests) for s, sd in zip(sizes, seeds, strict=True)]
    parts = []
    if spec.workers <= 1:
        for job in jobs:
            parts.append(simulate_chunk(*job))
            if progress:
                progress(job[1])
    else:
        with ProcessPoolExecutor(spec.workers) as pool:
            for part, job in zip(pool.map(simulate_chunk, *zip(*jobs, strict=True)), jobs, strict=True):
                parts.append(part)
                if progress:
                    progress(job[1])
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _detection(hit: np.ndarray, looks: np.ndarray) -> dict[str, float | None]:
    """Power (runs with a hit at any look) and the median requests, both arms, to the first hit."""
    any_hit = hit.any(axis=1)
    first = looks[hit.argmax(axis=1)][any_hit]
    return {"power": float(any_hit.mean()),
            "median_requests_to_detection": float(np.median(2 * first)) if first.size else None}


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial rate (simulation error of a rate ``k / n``)."""
    return 1.0 if k >= n else float(sps.beta.ppf(level, k + 1, n - k))


def summarize(spec: SimulationSpec, cfg: JudgeConfig, codes: dict[str, np.ndarray]) -> dict:
    """The JSON summary: false-verdict rates (judge and old tests), and power for a real difference."""
    looks, sc = spec.looks(), SCENARIOS[spec.scenario]
    false_by = {k: np.isin(codes[k], m.FALSE_IN_AA) for k in METRICS if k not in AFFECTED[spec.scenario]}
    any_false = np.logical_or.reduce([v.any(axis=1) for v in false_by.values()])
    out = {"scenario": spec.scenario, "description": sc.description, "sims": spec.sims,
           "look_every": spec.look_every, "max_per_arm": spec.max_per_arm, "looks": len(looks), "seed": spec.seed,
           "alpha": cfg.alpha, "alpha_per_metric": cfg.alpha_per_metric(),
           "metrics_checked_for_false_verdicts": list(false_by),
           "any_false_verdict_rate": float(any_false.mean()),
           "any_false_verdict_rate_upper95": upper_bound(int(any_false.sum()), spec.sims),
           "false_verdict_rate_by_metric": {k: float(v.any(axis=1).mean()) for k, v in false_by.items()}}
    if sc.target:
        out.update(target=sc.target, expected_verdict=m.VERDICTS[sc.expected],
                   **_detection(codes[sc.target] == sc.expected, looks))
    if spec.old_tests:
        out["fixed_horizon"] = _summarize_old(spec, sc, codes, looks)
    return out


def _summarize_old(spec: SimulationSpec, sc: Scenario, codes: dict[str, np.ndarray], looks: np.ndarray) -> dict:
    one = int(np.abs(looks - min(500, looks[-1])).argmin())  # the single look at n = 500 per arm
    old = {k: codes[f"old:{k}"] != 0 for k in OLD_METRICS if k not in AFFECTED[spec.scenario]}
    out: dict = {"tests": "experiments/fixed_horizon.py at alpha per metric, no correction for looks or metrics",
           "one_look_n_per_arm": int(looks[one])}
    if old:
        out["one_look_any_false_rate"] = float(np.logical_or.reduce([v[:, one] for v in old.values()]).mean())
        out["repeated_looks_any_false_rate"] = float(np.logical_or.reduce([v.any(axis=1) for v in old.values()]).mean())
        out["repeated_looks_false_rate_by_metric"] = {k: float(v.any(axis=1).mean()) for k, v in old.items()}
    if sc.target in OLD_METRICS:
        sign = -1 if HIGHER_IS_BETTER[sc.target] else 1  # the direction of a "worse"
        hit = codes[f"old:{sc.target}"] != 0 if sc.expected == m.DIFFERENT else codes[f"old:{sc.target}"] == sign
        out["one_look_power"] = float(hit[:, one].mean())
        out.update({f"repeated_looks_{k}": v for k, v in _detection(hit, looks).items()})
    return out


def simulate(spec: SimulationSpec, cfg: JudgeConfig | None = None, progress=None) -> dict:
    """Run ``spec`` and return its summary (``seconds``: wall time)."""
    cfg = cfg or JudgeConfig()
    start = time.perf_counter()
    codes = run_chunks(spec, cfg, progress)
    out = summarize(spec, cfg, codes)
    out["seconds"] = round(time.perf_counter() - start, 1)
    log.info("scenario %s: %s", spec.scenario, out)
    return out

