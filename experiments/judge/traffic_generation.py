"""Simulated generative answers: each request's stream figures as the router would sum them per unit.

A generative scenario (``traffic.Scenario.generative``) draws, on top of the classifier traffic's users, load
and trends:

* **Users.** A prompt-length factor ``exp(prompt_sd Z)`` (a user's prompts are long or short: the prefill, so the
  TTFT, grows with it) and an answer-length factor ``exp(tokens_sd Z)``; quality varies with the user's
  difficulty (``quality_sd``).
* **Requests.** TTFT = ``ttft_ms * prompt factor * the request's latency noise`` (the shared drifting load,
  the heavy tail, the trend); output tokens = 1 + Poisson(``tokens_mean * answer factor``); each gap between
  tokens has mean ``itl_ms * exp(0.1 Z) * sqrt(load)`` and a 30 % spread, summed over the answer's gaps; the
  request's latency is its whole stream (TTFT + gaps); a quality rating in [0, 1] per answer.
* **Effects** (the treatment only): ``ttft_scale_t`` (a slower prefill) and ``itl_scale_t`` (slower decoding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import expit, logit

from experiments.generation import GENERATION_FIELDS, TTFT_CAP_MS

if TYPE_CHECKING:
    from experiments.judge.traffic import Scenario

GAP_SPREAD = 0.3
"""The relative spread of one gap around its request's mean gap."""


def generation_values(sc: Scenario, rng: np.random.Generator, noise: np.ndarray, z_prompt: np.ndarray,
                      z_tokens: np.ndarray, z_difficulty: np.ndarray, arm: np.ndarray,
                      answered: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per request ``(B, n)``: each of ``GENERATION_FIELDS`` (zero for requests not answered) and the whole
    stream's latency in ms. ``noise``: the requests' latency multipliers around 1 (load, tail, trend)."""
    B, n = arm.shape
    treated = arm == 1
    ttft = sc.ttft_ms * np.exp(sc.prompt_sd * z_prompt) * noise * np.where(treated, sc.ttft_scale_t, 1.0)
    ttft = np.minimum(ttft, TTFT_CAP_MS)
    tokens = 1 + rng.poisson(sc.tokens_mean * np.exp(sc.tokens_sd * z_tokens))
    gaps = (tokens - 1).astype(np.float64)
    gap_mean = sc.itl_ms * np.exp(0.1 * rng.standard_normal((B, n))) * np.sqrt(noise) * np.where(
        treated, sc.itl_scale_t, 1.0)
    itl_sum = np.maximum(gaps * gap_mean + np.sqrt(gaps) * gap_mean * GAP_SPREAD * rng.standard_normal((B, n)), 0.0)
    itl_sq = gaps * gap_mean**2 * (1 + GAP_SPREAD**2)
    latency_ms = ttft + itl_sum
    seconds = latency_ms / 1000.0
    tokens_f = tokens.astype(np.float64)
    rating = np.clip(expit(logit(sc.quality) - sc.quality_sd * z_difficulty + 0.5 * rng.standard_normal((B, n))), 0, 1)
    a = answered.astype(np.float64)
    columns = (a, ttft, ttft**2, gaps, itl_sum, itl_sq, tokens_f, tokens_f**2, seconds, tokens_f**2 / seconds,
               a, rating, rating**2)
    values = {name: column * a for name, column in zip(GENERATION_FIELDS, columns, strict=True)}
    return values, latency_ms
