"""The simulation's scenarios and grids (``python -m serving judge simulate --scenario NAME [--grid NAME]``).

Users' differences come in two strengths: ``MILD`` and ``STRONG`` (spreads of their latency multiplier,
label mix and difficulty, see ``traffic.py``). ``STICKY`` is the sticky traffic the power scenarios run on:
2,000 users with heavy-tailed activity (Pareto index 1.2) and strong differences. A grid is a list of traffic
settings one scenario runs under, each a row of the README's tables.
"""

from __future__ import annotations

from experiments.judge.traffic import Scenario

MILD = {"latency_sd": 0.25, "label_sd": 1.2, "difficulty_sd": 1.2}
"""Mild differences between users."""
STRONG = {"latency_sd": 0.35, "label_sd": 1.8, "difficulty_sd": 1.8}
"""Strong differences between users."""
STICKY = {"users": 2000, "activity": "pareto", "activity_index": 1.2, **STRONG}
"""The sticky traffic of the ``-sticky`` and ``srm`` scenarios."""
RAMP = {"steps": (0.05, 0.25, 0.5)}
"""A ramp: the treatment at 5, then 25, then 50 % of traffic, for equal stretches of time."""
TRENDS = {"latency_trend": 0.10, "error_trend": 1.0, "label_share_start": 0.45, "label_share_end": 0.55}
"""Trends both arms share over the experiment: latency +10 %, server errors x2 (load), positive share
0.45 -> 0.55 (the mix of texts); the drifting AR(1) load level of every scenario comes on top."""
STILL = {"latency_trend": 0.0, "error_trend": 0.0, "label_share_start": 0.5, "label_share_end": 0.5, "load_sd": 0.0}
"""No trend and no drifting load: the ramp grid's rows add one trend each to this."""


def _effects(suffix: str, description: str, traffic: dict) -> dict[str, Scenario]:
    return {
        f"p99{suffix}": Scenario(f"p99 latency +20 % (every latency x1.2){description}", "latency_p99",
                                 latency_scale_t=1.2, **traffic),
        f"accuracy{suffix}": Scenario(f"accuracy -3 points (0.85 -> 0.82){description}", "accuracy",
                                      accuracy_t=0.82, **traffic),
        f"errors{suffix}": Scenario(f"server-error rate 0 -> 2 %{description}", "error_rate", error_rate=0.0,
                                    error_rate_t=0.02, **traffic),
        f"labels{suffix}": Scenario(f"label shift: positive share 0.50 -> 0.55{description}", "label_distribution",
                                    "different", label_shift_t=0.05, **traffic),
    }


GENERATIVE = {"generative": True, "prompt_sd": 0.6, "tokens_sd": 0.5, "quality_sd": 1.0}
"""A generative model's sticky users whose prompts (so their TTFTs) and answer lengths differ."""

SCENARIOS = {
    "aa": Scenario("A/A: independent requests"),
    **_effects("", "", {}),
    "aa-sticky": Scenario("A/A: sticky users", **STICKY),
    **_effects("-sticky", ", sticky users", STICKY),
    "srm": Scenario("sample-ratio fault: the treatment loses 5 % of its requests, sticky users", "sample_ratio",
                    "sample ratio mismatch", drop_t=0.05, **STICKY),
    "srm-users": Scenario("sample-ratio fault: the treatment loses every request of 5 % of its users, sticky "
                          "users", "sample_ratio", "sample ratio mismatch", drop_users_t=0.05, **STICKY),
    "aa-ramp": Scenario("A/A ramp 5 -> 25 -> 50 % with shared trends (latency +10 %, errors x2, positive share "
                        "0.45 -> 0.55), independent requests", **RAMP, **TRENDS),
    "aa-generative": Scenario("A/A generative: sticky users whose prompts differ in length", **STICKY, **GENERATIVE),
    "ttft-generative": Scenario("TTFT +50 % (a slower prefill), sticky users whose prompts differ in length",
                                "ttft_mean", ttft_scale_t=1.5, **STICKY, **GENERATIVE),
    "itl-generative": Scenario("inter-token latency +20 % (slower decoding), sticky users whose prompts differ "
                               "in length", "itl_mean", itl_scale_t=1.2, **STICKY, **GENERATIVE),
}
"""Every scenario by name."""

AFFECTED = {name: {"latency_p99": ("latency_mean", "latency_p99"), "accuracy": ("accuracy",),
                   "error_rate": ("error_rate",), "label_distribution": ("label_distribution",),
                   "ttft_mean": ("ttft_mean", "latency_mean", "latency_p99", "tokens_per_s"),
                   "itl_mean": ("itl_mean", "latency_mean", "latency_p99", "tokens_per_s")}.get(sc.target or "", ())
            for name, sc in SCENARIOS.items()}
"""Metrics whose verdict is not false in a scenario (its effect moves them)."""

GRIDS = {
    "sticky": (
        ("1,000 users, equal activity, mild differences", {"users": 1000, "activity": "equal", **MILD}),
        ("1,000 users, equal activity, strong differences", {"users": 1000, "activity": "equal", **STRONG}),
        ("2,000 users, light activity tail (Pareto 3), mild differences",
         {"users": 2000, "activity": "pareto", "activity_index": 3.0, **MILD}),
        ("2,000 users, heavy-tailed activity (Pareto 1.2), strong differences", dict(STICKY)),
        ("2,000 users, very heavy tail (Pareto 1.05), strong differences",
         {**STICKY, "activity_index": 1.05}),
        ("500 users, heavy-tailed activity (Pareto 1.2), strong differences", {**STICKY, "users": 500}),
        ("200 users, equal activity (50 requests each), strong differences",
         {"users": 200, "activity": "equal", **STRONG}),
        ("2,000 users, heavy tail, very strong differences (x2)",
         {**STICKY, **{k: 2 * v for k, v in STRONG.items()}}),
        ("20,000 users, heavy-tailed activity, strong differences", {**STICKY, "users": 20000}),
        ("the same heavy-tailed users, each request assigned on its own", {**STICKY, "sticky": False}),
    ),
    "ramp": (
        ("independent requests, latency +10 % over the experiment", {**STILL, "latency_trend": 0.10}),
        ("independent requests, latency +5 %", {**STILL, "latency_trend": 0.05}),
        ("independent requests, positive share 0.45 -> 0.55", {**STILL, "label_share_start": 0.45,
                                                               "label_share_end": 0.55}),
        ("independent requests, server errors x2", {**STILL, "error_trend": 1.0}),
        ("independent requests, a drifting load level (AR(1), sd 0.15)", {**STILL, "load_sd": 0.15}),
        ("independent requests, no trend", dict(STILL)),
        ("independent requests, every trend and the drifting load", {}),
        ("sticky heavy-tailed users (monotone ramp), every trend and the drifting load", dict(STICKY)),
        ("sticky heavy-tailed users, latency +30 %, positive share 0.35 -> 0.65, errors x3",
         {**STICKY, "latency_trend": 0.3, "label_share_start": 0.35, "label_share_end": 0.65, "error_trend": 2.0}),
    ),
    "power": (
        ("1,000 users, equal activity, mild differences, each request assigned on its own",
         {"users": 1000, "activity": "equal", **MILD, "sticky": False}),
        ("1,000 users, equal activity, mild differences, sticky", {"users": 1000, "activity": "equal", **MILD}),
        ("2,000 users, heavy-tailed activity, strong differences, each request assigned on its own",
         {**STICKY, "sticky": False}),
        ("2,000 users, heavy-tailed activity, strong differences, sticky", dict(STICKY)),
    ),
}
"""Named grids of traffic settings: ``--scenario aa-sticky --grid sticky``, ``--scenario aa-ramp --grid ramp``,
``--scenario p99-sticky,accuracy-sticky,errors-sticky,labels-sticky --grid power`` (the same users, sticky or
each request assigned on its own: what the right unit costs)."""
