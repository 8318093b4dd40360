"""Simulated traffic as the router sends it: sticky, heterogeneous users, ramps, trends shared by both arms.

``Scenario`` describes the population and the experiment, ``draw`` makes ``B`` experiments of ``n``
requests each at once (numpy arrays ``(B, n)``, request ``i`` arriving at time ``i``):

* **Users.** ``users`` users (0: every request comes from a user of its own), each with an activity
  (``equal``, or ``pareto`` with ``activity_index``: 1 + Pareto(index), heavy-tailed below 2), a latency
  multiplier ``exp(latency_sd Z)``, a label mix (the positive share's logit moved by ``label_sd Z``) and a
  difficulty (the accuracy's logit moved by ``difficulty_sd Z``; harder users also get lower confidence).
  Each request's user is drawn in proportion to activity.
* **Assignment.** A user's bucket is uniform in [0, 1) and the treatment owns ``[0, share)`` of the period
  (``steps``: the treatment's share per period, equal stretches of time), as the router's monotone
  assignment does: ramping up moves users from the control into the treatment, never back. ``sticky=False``
  assigns every request on its own (the router's unkeyed requests).
* **Requests.** Latency = ``median * user multiplier * exp(load_t + sigma Z) * heavy tail * (1 +
  latency_trend * t / n)``: ``load_t`` an AR(1) level shared by both arms; the heavy tail a 1 + Pareto(1.5)
  factor on ``tail_prob`` of requests. Server errors at ``error_rate * (1 + error_trend * t / n)``; the
  positive share moves from ``label_share_start`` to ``label_share_end`` over the experiment; one feedback
  outcome per answer; confidence = 0.5 + 0.5 * logistic(...).
* **Effects** (the treatment only): ``latency_scale_t``, ``error_rate_t``, ``accuracy_t``,
  ``label_shift_t``, and the sample-ratio faults ``drop_t`` (each treatment request is lost before it is
  recorded with this probability) and ``drop_users_t`` (this share of users lose every request they send
  while in the treatment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal
from scipy.special import expit, logit

from experiments.judge.traffic_generation import generation_values
from experiments.judge.units import PSEUDO_UNITS, tail_threshold_ms


@dataclass(frozen=True)
class Scenario:
    """Both arms' traffic; a ``_t`` field differing from its control value is the injected effect."""

    description: str
    target: str | None = None
    """The metric that should detect the effect (``sample_ratio``: the sample-ratio check; None: A/A)."""
    expected: str = "worse"
    """The verdict that counts as a detection."""
    users: int = 0
    sticky: bool = True
    activity: str = "equal"
    activity_index: float = 1.5
    latency_sd: float = 0.0
    label_sd: float = 0.0
    difficulty_sd: float = 0.0
    steps: tuple[float, ...] = (0.5,)
    latency_trend: float = 0.0
    error_trend: float = 0.0
    label_share_start: float = 0.5
    label_share_end: float = 0.5
    median_ms: float = 10.0
    sigma: float = 0.25
    load_sd: float = 0.15
    load_phi: float = 0.998
    tail_prob: float = 0.005
    tail_index: float = 1.5
    error_rate: float = 0.002
    accuracy: float = 0.85
    latency_scale_t: float = 1.0
    error_rate_t: float | None = None
    """None: the control's."""
    accuracy_t: float | None = None
    label_shift_t: float = 0.0
    drop_t: float = 0.0
    drop_users_t: float = 0.0
    generative: bool = False
    """A generative model's traffic: stream figures per request (``traffic_generation.py``)."""
    prompt_sd: float = 0.0
    """Spread of the users' prompt lengths (sd of the log of their TTFT factor)."""
    tokens_sd: float = 0.0
    """Spread of the users' answer lengths (sd of the log of their mean output tokens)."""
    quality_sd: float = 0.0
    """How much harder users' answers rate lower (on the rating's logit, per sd of difficulty)."""
    ttft_ms: float = 100.0
    itl_ms: float = 30.0
    tokens_mean: float = 20.0
    quality: float = 0.6
    ttft_scale_t: float = 1.0
    itl_scale_t: float = 1.0

    def problems(self) -> list[str]:
        out = []
        if self.users < 0:
            out.append(f"users={self.users}: expected >= 0 (0: every request is a user of its own)")
        if self.activity not in ("equal", "pareto"):
            out.append(f"activity={self.activity!r}: expected equal or pareto")
        if self.activity_index <= 0:
            out.append(f"activity_index={self.activity_index}: expected > 0")
        if not self.steps or not all(0 < s < 1 for s in self.steps):
            out.append(f"steps={self.steps}: expected treatment shares in (0, 1)")
        for name in ("latency_sd", "label_sd", "difficulty_sd", "load_sd", "prompt_sd", "tokens_sd", "quality_sd"):
            if getattr(self, name) < 0:
                out.append(f"{name}={getattr(self, name)}: expected >= 0")
        for name in ("drop_t", "drop_users_t", "label_share_start", "label_share_end"):
            if not 0 <= getattr(self, name) <= 1:
                out.append(f"{name}={getattr(self, name)}: expected 0..1")
        return out


@dataclass(frozen=True)
class Requests:
    """``B`` simulated experiments of ``n`` requests; per-request arrays are ``(B, n)``."""

    row: np.ndarray
    """The row (unit and period; arm for unkeyed rows) each request adds to."""
    arm: np.ndarray
    """0 control, 1 treatment."""
    kept: np.ndarray
    """False: lost before it was recorded (the sample-ratio faults)."""
    values: dict[str, np.ndarray]
    """Per-request contributions to the frame's sums (``frame.SUMS`` and ``label:<name>``)."""
    row_group: np.ndarray
    """``(B, R)``: each row's arm * P + period."""
    row_unit: np.ndarray
    """``(R,)``: each row's unit."""
    n_units: int
    keyed: bool
    """Rows are users' (True) or buckets of independently assigned requests (False)."""
    first_seen: np.ndarray | None
    """Keyed: ``(B, U)`` the time of each user's first recorded request (``n``: none); users are numbered
    per experiment among those who send requests."""
    threshold_at: np.ndarray
    """``(B,)``: the number of requests after which the tail threshold is known (``n + 1``: never)."""


def _latency(sc: Scenario, rng: np.random.Generator, B: int, n: int) -> np.ndarray:
    innov = rng.standard_normal((B, n)) * sc.load_sd * math.sqrt(1 - sc.load_phi**2)
    start = rng.standard_normal((B, 1)) * sc.load_sd
    load, _ = signal.lfilter([1.0], [1.0, -sc.load_phi], innov, axis=1, zi=start * sc.load_phi)
    tail = np.where(rng.random((B, n)) < sc.tail_prob, 1 + rng.pareto(sc.tail_index, (B, n)), 1.0)
    trend = 1 + sc.latency_trend * np.arange(n) / n
    return sc.median_ms * np.exp(load + sc.sigma * rng.standard_normal((B, n))) * tail * trend


def _who(sc: Scenario, rng: np.random.Generator, B: int, n: int) -> np.ndarray:
    """Each request's user ``(B, n)`` (its own index when ``users == 0``)."""
    if sc.users == 0:
        return np.broadcast_to(np.arange(n), (B, n))
    if sc.activity == "equal":
        return rng.integers(0, sc.users, (B, n))
    act = 1 + rng.pareto(sc.activity_index, (B, sc.users))
    cum = np.cumsum(act, axis=1)
    cum = cum / cum[:, -1:] + np.arange(B)[:, None]
    draws = rng.random((B, n)) + np.arange(B)[:, None]
    idx = np.searchsorted(cum.ravel(), draws.ravel()).reshape(B, n)
    return np.minimum(idx - np.arange(B)[:, None] * sc.users, sc.users - 1)


def draw(sc: Scenario, rng: np.random.Generator, B: int, n: int, needed: int, quantile: float) -> Requests:
    """``B`` experiments of ``n`` requests of scenario ``sc`` (the module docstring)."""
    P = len(sc.steps)
    b_idx = np.arange(B)[:, None]
    period = np.minimum(np.arange(n) * P // n, P - 1)
    share_t = np.asarray(sc.steps)[period]
    who = _who(sc, rng, B, n)
    pop = max(sc.users, n)
    z_lat, z_lab, z_dif = (rng.standard_normal((B, pop))[b_idx, who] for _ in range(3))
    keyed = sc.users > 0 and sc.sticky
    if keyed:
        bucket = rng.random((B, sc.users))
        arm = (bucket[b_idx, who] < share_t).astype(np.int64)
        lost_user = rng.random((B, sc.users))[b_idx, who] < sc.drop_users_t
    else:
        arm = (rng.random((B, n)) < share_t).astype(np.int64)
        lost_user = rng.random((B, n)) < sc.drop_users_t
    kept = ~((arm == 1) & (lost_user | (rng.random((B, n)) < sc.drop_t)))
    t_frac = np.arange(n) / n
    err_t = sc.error_rate if sc.error_rate_t is None else sc.error_rate_t
    err_rate = np.where(arm == 1, err_t, sc.error_rate) * (1 + sc.error_trend * t_frac)
    err = kept & (rng.random((B, n)) < err_rate)
    ans = kept & ~err
    base = _latency(sc, rng, B, n)
    lat = base * np.exp(sc.latency_sd * z_lat) * np.where(arm == 1, sc.latency_scale_t, 1.0)
    generation: dict[str, np.ndarray] = {}
    if sc.generative:  # the request's latency is its whole stream
        z_prompt, z_tokens = (rng.standard_normal((B, pop))[b_idx, who] for _ in range(2))
        generation, lat = generation_values(sc, rng, base / sc.median_ms, z_prompt, z_tokens, z_dif, arm, ans)
    share = sc.label_share_start + (sc.label_share_end - sc.label_share_start) * t_frac + sc.label_shift_t * arm
    pos = rng.random((B, n)) < expit(logit(np.clip(share, 1e-6, 1 - 1e-6)) + sc.label_sd * z_lab)
    acc_t = sc.accuracy if sc.accuracy_t is None else sc.accuracy_t
    acc = np.where(arm == 1, acc_t, sc.accuracy)
    correct = rng.random((B, n)) < expit(logit(acc) - sc.difficulty_sd * z_dif)
    conf = 0.5 + 0.5 * expit(logit(0.6) - 0.5 * sc.difficulty_sd * z_dif + 0.8 * rng.standard_normal((B, n)))
    capped = np.minimum(lat, 1000.0)
    threshold, threshold_at, tail = _tail(lat, ans & (arm == 0), needed, quantile)
    a = ans.astype(np.float64)
    values = {"requests": kept.astype(np.float64), "server_errors": err.astype(np.float64), "answered": a,
              "latency_sum": capped * a, "latency_sq": capped**2 * a, "predictions": a, "confidence_n": a,
              "confidence_sum": conf * a, "confidence_sq": conf**2 * a, "feedback_n": a,
              "feedback_correct": correct * a, "tail": tail * a, "label:positive": pos * a,
              "label:negative": (1 - pos) * a, **generation}
    if keyed:
        return _keyed(who, bucket, period, arm, kept, values, sc.steps, threshold_at)
    pseudo = rng.integers(0, PSEUDO_UNITS, (B, n))
    row = (pseudo * 2 + arm) * P + period
    R = PSEUDO_UNITS * 2 * P
    group_of_row = ((np.arange(R) // P) % 2) * P + np.arange(R) % P
    return Requests(row, arm, kept, values, np.broadcast_to(group_of_row, (B, R)), np.arange(R) // (2 * P),
                    PSEUDO_UNITS, False, None, threshold_at)


def _keyed(who: np.ndarray, bucket: np.ndarray, period: np.ndarray, arm: np.ndarray, kept: np.ndarray,
           values: dict[str, np.ndarray], steps: tuple[float, ...], threshold_at: np.ndarray) -> Requests:
    """Rows per (user, period), only for the users who send requests (the rest would be empty): users are
    numbered per experiment."""
    B, n = who.shape
    P = len(steps)
    found = [np.unique(who[b], return_inverse=True) for b in range(B)]
    U = max(len(u) for u, _ in found)
    bucket_c = np.ones((B, U))  # padding users (no requests) sit in the control
    who_c = np.empty_like(who)
    for b, (u, inv) in enumerate(found):
        bucket_c[b, :len(u)] = bucket[b, u]
        who_c[b] = inv.reshape(-1)
    row_arm = (bucket_c[:, :, None] < np.asarray(steps)).reshape(B, -1).astype(np.int64)
    row_group = row_arm * P + np.tile(np.arange(P), U)
    first = np.full((B, U), n)
    rows_b = np.broadcast_to(np.arange(B)[:, None], (B, n))
    np.minimum.at(first, (rows_b[kept], who_c[kept]), np.broadcast_to(np.arange(n), (B, n))[kept])
    return Requests(who_c * P + period, arm, kept, values, row_group, np.arange(U * P) // P, U, True, first,
                    threshold_at)


def _tail(lat: np.ndarray, control_answer: np.ndarray, needed: int,
          quantile: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per experiment: the tail threshold from the control's first ``needed`` answers, the time it is
    known, and per request whether it is slower."""
    B, n = lat.shape
    threshold = np.full(B, np.inf)
    at = np.full(B, n + 1)
    for b in range(B):
        idx = np.flatnonzero(control_answer[b])
        th = tail_threshold_ms(lat[b, idx], quantile, needed)
        if th is not None:
            threshold[b], at[b] = th, idx[needed - 1] + 1
    return threshold, at, (lat > threshold[:, None]).astype(np.float64)
