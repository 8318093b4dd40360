"""Proof by simulation: the judge read at every look, on traffic as the router sends it.

Each simulated experiment is ``2 * max_per_arm`` requests of a ``traffic.Scenario`` (sticky users, ramps,
shared trends); the judge is read every ``2 * look_every`` requests (a look every ``look_every`` requests
per arm at a 50/50 split). At every look two judgements of the same data run through the same code
(``metrics.evaluate``):

* **units** (the judge): the unit-level table -- one row per user and period, or per bucket of
  independently assigned requests -- compared within periods;
* **naive**: every request a unit of its own, the periods pooled (a request-level table), as a judge that
  counts requests would read it.

In A/A scenarios any "better", "worse" or "different" (and for the units judgement any "sample ratio
mismatch") is false; ``any_false_verdict_rate`` (runs with at least one, on any metric at any look) must
stay <= alpha. Other scenarios change one thing in the treatment and report the power (runs where the right
verdict came by the last look) and the median number of requests (both arms) until it came.
"""

from __future__ import annotations

import ctypes
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

from experiments.generation import GENERATION_FIELDS
from experiments.judge import metrics as m
from experiments.judge.config import JudgeConfig, metrics_of
from experiments.judge.frame import SUMS, Frame
from experiments.judge.scenarios import AFFECTED, SCENARIOS
from experiments.judge.traffic import Requests, Scenario, draw

log = logging.getLogger(__name__)

LABELS = ("negative", "positive")
"""The simulated model's labels."""


@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate (``python -m serving judge simulate`` mirrors it). A traffic field left at None
    keeps the scenario's own value."""

    scenario: str = "aa"
    """One of ``scenarios.SCENARIOS``."""
    sims: int = 1000
    """Simulated experiments."""
    look_every: int = 100
    """Requests per arm between two looks (2 x this many requests in all)."""
    max_per_arm: int = 5000
    """Requests per arm at the last look (2 x this many in all)."""
    seed: int = 0
    """Seed of the whole simulation (same seed, same result)."""
    workers: int = 1
    """Processes to run chunks of experiments in."""
    chunk: int = 50
    """Experiments per chunk (memory: about chunk x max_per_arm x 300 bytes)."""
    users: int | None = None
    """Users (0: every request from a user of its own)."""
    sticky: bool | None = None
    """Users keep their arm (False: every request is assigned on its own)."""
    activity: str | None = None
    """equal, or pareto (heavy-tailed below an index of 2)."""
    activity_index: float | None = None
    """The Pareto index of the users' activity."""
    latency_sd: float | None = None
    """Spread of the users' latency multipliers (sd of its log)."""
    label_sd: float | None = None
    """Spread of the users' label mix (sd of the positive share's logit)."""
    difficulty_sd: float | None = None
    """Spread of the users' difficulty (sd of the accuracy's logit)."""
    steps: tuple[float, ...] | None = None
    """The treatment's share per period (a ramp: 0.05,0.25,0.5)."""
    latency_trend: float | None = None
    """Latency growth over the experiment, both arms (0.1: +10 %)."""
    error_trend: float | None = None
    """Server-error rate growth over the experiment, both arms (1.0: doubles)."""
    label_share_start: float | None = None
    """The positive share at the start, both arms."""
    label_share_end: float | None = None
    """The positive share at the end, both arms."""
    load_sd: float | None = None
    """Spread of the drifting (AR(1)) load level both arms share, on the log-latency scale (0: none)."""
    drop_t: float | None = None
    """Share of the treatment's requests lost before they are recorded (a sample-ratio fault)."""
    drop_users_t: float | None = None
    """Share of users who lose every request they send while in the treatment (a sample-ratio fault)."""
    prompt_sd: float | None = None
    """Generative scenarios: spread of the users' prompt lengths (sd of the log of their TTFT factor)."""
    tokens_sd: float | None = None
    """Generative scenarios: spread of the users' answer lengths (sd of the log of their mean output tokens)."""
    ttft_scale_t: float | None = None
    """Generative scenarios: the treatment's TTFT multiplier (1.5: a prefill 50 % slower)."""
    itl_scale_t: float | None = None
    """Generative scenarios: the treatment's inter-token latency multiplier."""

    TRAFFIC = ("users", "sticky", "activity", "activity_index", "latency_sd", "label_sd", "difficulty_sd", "steps",
               "latency_trend", "error_trend", "label_share_start", "label_share_end", "load_sd", "drop_t",
               "drop_users_t", "prompt_sd", "tokens_sd", "ttft_scale_t", "itl_scale_t")

    def __post_init__(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario={self.scenario!r}: expected one of {', '.join(SCENARIOS)}")
        for name in ("sims", "look_every", "workers", "chunk"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: expected >= 1")
        if self.max_per_arm < self.look_every:
            problems.append(f"max_per_arm={self.max_per_arm}: expected >= look_every ({self.look_every})")
        if not problems:
            problems += self.traffic().problems()
        if problems:
            raise ValueError("invalid simulation: " + "; ".join(problems))

    def overrides(self) -> dict:
        return {k: getattr(self, k) for k in self.TRAFFIC if getattr(self, k) is not None}

    def traffic(self) -> Scenario:
        return replace(SCENARIOS[self.scenario], **self.overrides())

    def looks(self) -> np.ndarray:
        """Requests in all at each look."""
        return np.arange(2 * self.look_every, 2 * self.max_per_arm + 1, 2 * self.look_every)


def _frames(req: Requests, acc: dict[str, np.ndarray], naive: dict[str, np.ndarray], L: int, shares: np.ndarray,
            pooled_t: float, unit_counts: np.ndarray, generative: bool) -> tuple[Frame, Frame]:
    """The units frame and the naive frame after ``L`` requests (``acc``: the rows' sums so far; ``naive``:
    the same per arm)."""
    B = req.row_group.shape[0]
    sums = SUMS + (GENERATION_FIELDS if generative else ())
    known = L >= req.threshold_at
    keyed = np.full(req.row_unit.shape, req.keyed)
    units = Frame(("control", "treatment"), shares, req.row_group, req.row_group, req.row_unit, req.n_units, keyed,
                  {k: acc[k] for k in sums}, {k: acc[f"label:{k}"] for k in LABELS}, known, unit_counts, generative)
    groups = np.broadcast_to(np.arange(2), (B, 2))
    pooled = Frame(("control", "treatment"), np.array([[1 - pooled_t, pooled_t]]), groups, groups, None, 0,
                   np.zeros(2, dtype=bool), {k: naive[k] for k in sums}, {k: naive[f"label:{k}"] for k in LABELS},
                   known, naive["requests"][:, None, :], generative)
    return units, pooled


def _new_units(req: Requests, L: int, period: np.ndarray, acc_new: np.ndarray, P: int) -> np.ndarray:
    """``(B, P, 2)`` units first seen per period and arm after ``L`` requests."""
    if not req.keyed:
        return acc_new
    B, U = req.first_seen.shape
    seen = req.first_seen < L
    p = period[np.minimum(req.first_seen, len(period) - 1)]
    arm = req.row_group[np.arange(B)[:, None], np.arange(U) * P + p] // P
    flat = (np.arange(B)[:, None] * 2 * P + p * 2 + arm)[seen]
    return np.bincount(flat, minlength=B * 2 * P).reshape(B, P, 2).astype(np.float64)


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse: the look loop allocates and frees arrays of a few
    MB hundreds of times, and returning them to the system and faulting fresh zeroed pages back in took as
    much time as the arithmetic (a ramp's 200 runs: 43 s -> 18 s here). A no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters (malloc.h)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest: arrays up to 32 MB come from the heap
    libc.mallopt(m_trim_threshold, 1 << 30)  # and up to 1 GB of freed heap stays mapped


def simulate_chunk(sc: Scenario, sims: int, looks: np.ndarray, cfg: JudgeConfig,
                   seed: np.random.SeedSequence) -> dict[str, np.ndarray]:
    """Verdict codes per judgement and metric (``units:accuracy``, ``naive:sample_ratio``, ...), shape
    ``(sims, looks)``, for ``sims`` runs of ``sc``."""
    _keep_freed_memory()
    rng = np.random.default_rng(seed)
    n, P = int(looks[-1]), len(sc.steps)
    req = draw(sc, rng, sims, n, cfg.min_samples.latency_p99, cfg.quantile)
    B, R = req.row_group.shape
    flat_rows = req.row + R * np.arange(B)[:, None]
    period = np.minimum(np.arange(n) * P // n, P - 1)
    steps = np.asarray(sc.steps)
    shares = np.stack([1 - steps, steps], axis=1)
    pooled = np.cumsum(steps[period]) / np.arange(1, n + 1)
    new_flat = (np.arange(B)[:, None] * 2 * P + period * 2 + req.arm)
    acc = {k: np.zeros((B, R)) for k in req.values}
    naive = {k: np.zeros((B, 2)) for k in req.values}
    by_arm = req.arm + 2 * np.arange(B)[:, None]
    acc_new = np.zeros((B, P, 2))
    out = {f"{j}:{k}": np.zeros((B, len(looks)), dtype=np.int8) for j in ("units", "naive")
           for k in (*metrics_of(sc.generative), "sample_ratio")}
    start = 0
    for j, L in enumerate(looks):
        idx = flat_rows[:, start:L].ravel()
        for k, v in req.values.items():
            acc[k] += np.bincount(idx, weights=v[:, start:L].ravel(), minlength=B * R).reshape(B, R)
            naive[k] += np.bincount(by_arm[:, start:L].ravel(), weights=v[:, start:L].ravel(),
                                    minlength=2 * B).reshape(B, 2)
        acc_new += np.bincount(new_flat[:, start:L].ravel(), weights=req.kept[:, start:L].ravel(),
                               minlength=B * 2 * P).reshape(B, P, 2)
        frames = _frames(req, acc, naive, int(L), shares, float(pooled[L - 1]),
                         _new_units(req, int(L), period, acc_new, P), sc.generative)
        for name, frame in zip(("units", "naive"), frames, strict=True):
            arrays, srm = m.evaluate(frame, cfg)
            for metric, a in arrays["treatment"].items():
                out[f"{name}:{metric}"][:, j] = a.codes
            out[f"{name}:sample_ratio"][:, j] = srm.mismatch
        start = int(L)
    return out


def run_chunks(spec: SimulationSpec, cfg: JudgeConfig, progress=None) -> dict[str, np.ndarray]:
    """All runs of ``spec``, in chunks (over ``spec.workers`` processes); codes stacked over runs."""
    looks, sc = spec.looks(), spec.traffic()
    sizes = [min(spec.chunk, spec.sims - i) for i in range(0, spec.sims, spec.chunk)]
    seeds = np.random.SeedSequence(spec.seed).spawn(len(sizes))
    jobs = [(sc, s, looks, cfg, sd) for s, sd in zip(sizes, seeds, strict=True)]
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
            "median_requests_to_detection": float(np.median(first)) if first.size else None}


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial rate (simulation error of a rate ``k / n``)."""
    return 1.0 if k >= n else float(sps.beta.ppf(level, k + 1, n - k))


def _judgement(spec: SimulationSpec, sc: Scenario, codes: dict[str, np.ndarray], name: str) -> dict:
    looks = spec.looks()
    false_by = {k: np.isin(codes[f"{name}:{k}"], m.FALSE_IN_AA) for k in metrics_of(sc.generative)
                if k not in AFFECTED[spec.scenario]}
    srm_false = codes[f"{name}:sample_ratio"].astype(bool)
    counted = dict(false_by)
    if name == "units" and sc.target != "sample_ratio":
        counted["sample_ratio"] = srm_false
    any_false = np.logical_or.reduce([v.any(axis=1) for v in counted.values()])
    out = {"any_false_verdict_rate": float(any_false.mean()),
           "any_false_verdict_rate_upper95": upper_bound(int(any_false.sum()), spec.sims),
           "false_verdict_rate_by_metric": {k: float(v.any(axis=1).mean()) for k, v in false_by.items()}}
    if sc.target != "sample_ratio":
        out["sample_ratio_false_rate"] = float(srm_false.any(axis=1).mean())
    if sc.target == "sample_ratio":
        out.update(_detection(srm_false, looks))
    elif sc.target:
        out.update(_detection(codes[f"{name}:{sc.target}"] == m.VERDICTS.index(sc.expected), looks))
    return out


def summarize(spec: SimulationSpec, cfg: JudgeConfig, codes: dict[str, np.ndarray]) -> dict:
    """The JSON summary: the judge's (units) false-verdict rate and power, and the naive judgement's
    (``naive``: its ``any_false_verdict_rate`` counts the six metrics, as a judge without the sample-ratio
    check would; ``sample_ratio_false_rate`` is its check's own)."""
    sc = spec.traffic()
    out = {"scenario": spec.scenario, "description": sc.description, "traffic": spec.overrides(), "sims": spec.sims,
           "look_every": spec.look_every, "max_per_arm": spec.max_per_arm, "looks": len(spec.looks()),
           "seed": spec.seed, "alpha": cfg.alpha, "alpha_per_check": cfg.alpha_per_metric(1, sc.generative),
           "users": sc.users, "sticky": sc.sticky, "activity": sc.activity, "activity_index": sc.activity_index,
           "steps": list(sc.steps), "metrics_checked_for_false_verdicts": [
               k for k in metrics_of(sc.generative) if k not in AFFECTED[spec.scenario]]}
    if sc.target:
        out.update(target=sc.target, expected_verdict=sc.expected)
    out.update(_judgement(spec, sc, codes, "units"))
    out["naive"] = _judgement(spec, sc, codes, "naive")
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
