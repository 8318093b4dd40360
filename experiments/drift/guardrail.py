"""Drift as a label-free guardrail: is the treatment drifting from its training reference where the control
is not?

Each arm is compared with the reference of the version it serves (``monitor.py``). The verdict for a treatment:

* "not enough evidence yet": either arm has fewer than ``min_samples`` monitored texts (200 by default:
  below that the PSI of 10 bins of a sample from the very reference distribution is ~ 9/n, too close to
  the threshold);
* "worse": some feature's PSI is above ``psi_threshold`` (0.2) in the treatment and at most the threshold
  in the control (a shift only the treatment shows: its inputs or, above all, its predictions moved);
* "equivalent within margin": otherwise -- no feature of the treatment is over the threshold, or the
  control is over it on the same feature too (the traffic moved for both arms: not the treatment's doing).

The KS p-value is shown in the report but not used here: on windows of thousands of texts it flags shifts
too small to matter. This is a monitoring rule on a sliding window, not a confidence sequence, and it is
outside the judge's alpha budget. The result has the shape of ``MetricResult.to_dict()`` (the estimate is
the treatment's largest PSI, ``margin`` the threshold), so a rollout can name ``drift`` as a guardrail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.drift.monitor import MIN_SAMPLES, PSI_THRESHOLD, FeatureDrift


def drift_verdict(control: Mapping[str, FeatureDrift], treatment: Mapping[str, FeatureDrift],
                  psi_threshold: float = PSI_THRESHOLD, min_samples: int = MIN_SAMPLES) -> dict[str, Any]:
    """The drift guardrail's verdict for ``treatment`` against ``control`` (each: feature -> ``FeatureDrift``)."""
    n_c = control["text_length"].n if "text_length" in control else 0
    n_t = treatment["text_length"].n if "text_length" in treatment else 0
    top = max(treatment, key=lambda f: treatment[f].psi, default=None)
    only_treatment = sorted(f for f, d in treatment.items()
                            if d.psi > psi_threshold and not (f in control and control[f].psi > psi_threshold))
    if min(n_c, n_t) < min_samples:
        verdict = "not enough evidence yet"
    elif only_treatment:
        verdict = "worse"
    else:
        verdict = "equivalent within margin"
    return {"verdict": verdict, "estimate": None if top is None else round(treatment[top].psi, 4),
            "low": None, "high": None, "n_control": n_c, "n_treatment": n_t, "min_samples": min_samples,
            "margin": psi_threshold, "unit": " PSI", "features": only_treatment}
