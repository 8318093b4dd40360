"""The experiment report: per arm counts, latency quantiles, label mix, shadow agreement, accuracy,
and each treatment compared with the control, with a plain verdict per metric.

With more than one treatment each comparison uses ``alpha / number of treatments`` (Bonferroni), so
the chance of any false "better"/"worse" across the experiment stays at most ``alpha`` per metric.

The verdicts to act on come from the anytime-valid judge (``experiments.judge``, key ``judge``): valid at every
look, family-wise over all metrics. The fixed-horizon ``comparisons`` stay as a snapshot, valid for one
look only (reading them repeatedly inflates false verdicts: ``python -m serving judge simulate``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

import numpy as np

from experiments import fixed_horizon as stats
from experiments.arm_record import ArmRecord
from experiments.drift.guardrail import drift_verdict
from experiments.drift.monitor import FeatureDrift
from experiments.judge import ArmStats, JudgeConfig, judge
from experiments.spec import Experiment

QUANTILES = (0.5, 0.95, 0.99)
MIN_SAMPLES = 20
NOT_ENOUGH = "not enough data"


def _ms(iv: stats.Interval) -> dict[str, float]:
    return {k: round(v * 1000, 4) for k, v in iv.to_dict().items()}


def _latency(lat: np.ndarray, alpha: float, resamples: int, rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(len(lat))}
    if len(lat) == 0:
        return out
    out["mean"] = round(float(lat.mean()) * 1000, 4)
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = _ms(stats.quantile_ci(lat, q, alpha, resamples, rng))
    # the empirical CDF at every percent (0, 1, ..., 100), for plots
    out["cdf_ms"] = [round(float(v) * 1000, 4) for v in np.quantile(lat, np.linspace(0, 1, 101))]
    return out


def _proportion(k: int, n: int, alpha: float) -> dict[str, Any] | None:
    if n == 0:
        return None
    return {"n": n, "successes": k, **stats.wilson_ci(k, n, alpha).to_dict()}


def _arm(rec: ArmRecord, share: float | None, alpha: float, resamples: int, rng: np.random.Generator) -> dict:
    out = {
        "requests": rec.requests,
        "errors": dict(rec.errors),
        "client_errors": dict(rec.client_errors),
        "fallbacks_in": rec.fallbacks_in,
        "latency_ms": _latency(np.asarray(rec.latency), alpha, resamples, rng),
        "labels": dict(sorted(rec.labels.items())),
        "accuracy": _proportion(rec.feedback_correct, rec.feedback_total, alpha),
    }
    if share is not None:
        out["share"] = round(share, 6)
    return out


def _compare(c: ArmRecord, t: ArmRecord, alpha: float) -> dict[str, Any]:
    lc, lt = np.asarray(c.latency), np.asarray(t.latency)
    out: dict[str, Any] = {}
    if min(len(lc), len(lt)) >= MIN_SAMPLES:
        p99 = stats.quantile_diff_ci(lc, lt, 0.99, alpha)
        mean = stats.mean_diff_ci(lc, lt, alpha)
        out["latency_p99_diff_ms"] = {**_ms(p99), "verdict": stats.verdict_from_interval(p99, higher_is_better=False)}
        out["latency_mean_diff_ms"] = {**_ms(mean), "verdict": stats.verdict_from_interval(mean, higher_is_better=False)}
    else:
        out["latency_p99_diff_ms"] = out["latency_mean_diff_ms"] = {"verdict": NOT_ENOUGH}
    if min(sum(c.labels.values()), sum(t.labels.values())) >= MIN_SAMPLES:
        chi = stats.label_chi_square(c.labels, t.labels)
        out["label_distribution"] = {**chi.to_dict(), "verdict": stats.verdict_from_p(chi.p_value, alpha)}
    else:
        out["label_distribution"] = {"verdict": NOT_ENOUGH}
    if min(c.feedback_total, t.feedback_total) >= MIN_SAMPLES:
        acc = stats.proportion_diff_ci(c.feedback_correct, c.feedback_total, t.feedback_correct, t.feedback_total, alpha)
        out["accuracy_diff"] = {**acc.to_dict(), "verdict": stats.verdict_from_interval(acc, higher_is_better=True)}
    else:
        out["accuracy_diff"] = {"verdict": NOT_ENOUGH if c.feedback_total + t.feedback_total else "no feedback"}
    return out


def judge_arms(control: ArmRecord, treatments: dict[str, ArmRecord], alpha: float,
               config: JudgeConfig | None = None) -> dict[str, Any]:
    """The anytime-valid judge's verdicts for each treatment against the control (``experiments.judge``);
    ``config`` (margins, minimum samples: a rollout's) defaults to ``JudgeConfig(alpha=alpha)``."""
    def arm_stats(rec: ArmRecord) -> ArmStats:
        server_errors = sum(rec.errors.values())
        return ArmStats(requests=rec.requests + server_errors, server_errors=server_errors,
                        latency_ms=np.asarray(rec.latency, dtype=np.float64) * 1000, labels=dict(rec.labels),
                        feedback_correct=rec.feedback_correct, feedback_total=rec.feedback_total,
                        confidence=rec.confidence)

    config, c = config or JudgeConfig(alpha=alpha), arm_stats(control)
    return {t: judge(c, arm_stats(rec), config, comparisons=len(treatments)).to_dict() for t, rec in treatments.items()}


def build_report(exp: Experiment, snapshot: dict[str, dict], alpha: float = 0.05,
                 resamples: int = 2000, rng: np.random.Generator | None = None,
                 drift: dict[str, dict[str, FeatureDrift]] | None = None) -> dict[str, Any]:
    """The report as a JSON-able dict, from a ``Recorder.snapshot()`` or a ``Store.snapshot()`` (whose
    ``"feedback"`` counts of pending and expired feedback it copies); ``drift`` (``DriftFeed.report()``)
    adds the "drift" section and the judge's label-free ``drift`` guardrail per treatment."""
    rng = rng or np.random.default_rng(0)
    arms, shadows = snapshot["arms"], snapshot["shadow"]
    empty = ArmRecord(latency=np.empty(0))
    control = exp.arms[0].name
    treatments = [a.name for a in exp.arms[1:]]
    alpha_each = alpha / max(1, len(treatments))
    report: dict[str, Any] = {
        "experiment": exp.name,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "alpha": alpha,
        "alpha_per_comparison": alpha_each,
        "control": control,
        "arms": {a: _arm(arms.get(a, empty), exp.shares.get(a), alpha, resamples, rng)
                 for a in [*exp.arm_names, *[x for x in arms if x not in exp.arm_names]]},
        "shadow": {},
        "comparisons": {t: _compare(arms.get(control, empty), arms.get(t, empty), alpha_each) for t in treatments},
        "judge": judge_arms(arms.get(control, empty), {t: arms.get(t, empty) for t in treatments}, alpha),
    }
    if drift is not None:
        add_drift(report, drift)
    if "feedback" in snapshot:  # from a store: feedback waiting for its answer, and expired without one
        report["feedback"] = dict(snapshot["feedback"])
    for name, rec in shadows.items():
        report["shadow"][name] = {
            "requests": rec.requests,
            "errors": sum(rec.errors.values()),
            "dropped": rec.shadow_dropped,
            "latency_ms": _latency(np.asarray(rec.latency), alpha, resamples, rng),
            "labels": dict(sorted(rec.labels.items())),
            "agreement": _proportion(rec.shadow_agree, rec.shadow_compared, alpha),
        }
    return report


def plot_latency_cdf(r: dict[str, Any], path: str) -> None:
    """A PNG of the latency CDF per arm (and shadow), from the report's ``cdf_ms``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [(name, a["latency_ms"]) for name, a in r["arms"].items()]
    series += [(f"{name} (shadow)", s["latency_ms"]) for name, s in r["shadow"].items()]
    for name, lat in series:
        if "cdf_ms" in lat:
            ax.plot(lat["cdf_ms"], np.linspace(0, 1, len(lat["cdf_ms"])), label=f"{name} (n={lat['n']})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, router side)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"experiment {r['experiment']}: latency CDF per arm")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _iv(d: dict | None, unit: str = "") -> str:
    if not d or "estimate" not in d:
        return "-"
    return f"{d['estimate']:.3f}{unit} [{d['low']:.3f}, {d['high']:.3f}]"


def render_markdown(r: dict[str, Any]) -> str:
    """The report for a person: Markdown tables and one verdict line per metric."""
    level = round((1 - r["alpha"]) * 100, 2)
    lines = [f"# Experiment `{r['experiment']}`", "",
             f"Generated {r['generated_at']}; {level:g} % confidence intervals; control: `{r['control']}`.", "",
             "## Arms", "",
             "| arm | share | requests | errors | client errors | fallbacks in | mean ms | p50 ms | p95 ms | p99 ms "
             "| accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in r["arms"].items():
        lat = a["latency_ms"]
        errors = ", ".join(f"{k}: {v}" for k, v in a["errors"].items()) or "0"
        client = ", ".join(f"{k}: {v}" for k, v in a.get("client_errors", {}).items()) or "0"
        share = f"{a['share']:.3f}" if "share" in a else "-"
        mean = f"{lat['mean']:.3f}" if "mean" in lat else "-"
        lines.append(f"| {name} | {share} | {a['requests']} | {errors} | {client} | {a['fallbacks_in']} | {mean} | "
                     f"{_iv(lat.get('p50'))} | {_iv(lat.get('p95'))} | {_iv(lat.get('p99'))} | {_iv(a['accuracy'])} |")
    lines += ["", "Predicted labels: " + "; ".join(
        f"{name}: " + (", ".join(f"{k} {v}" for k, v in a["labels"].items()) or "none") for name, a in r["arms"].items())]
    if "feedback" in r:
        lines += ["", f"Feedback waiting for its answer: {r['feedback']['pending']}; expired without one: "
                      f"{r['feedback']['expired']}."]
    if r["shadow"]:
        lines += ["", "## Shadow", "", "| shadow | requests | errors | dropped | p50 ms | p99 ms | agreement |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in r["shadow"].items():
            lat = s["latency_ms"]
            lines.append(f"| {name} | {s['requests']} | {s['errors']} | {s['dropped']} | {_iv(lat.get('p50'))} | "
                         f"{_iv(lat.get('p99'))} | {_iv(s['agreement'])} |")
    lines += judge_lines(r)
    lines += drift_lines(r)
    lines += ["", "## Snapshot (fixed-horizon, valid for one look only)", "",
              f"Each treatment vs `{r['control']}`, alpha {r['alpha_per_comparison']:g} per comparison and per metric. "
              "Read once at a sample size fixed in advance; read repeatedly, these give false verdicts far more "
              "often than alpha.", ""]
    for t, c in r["comparisons"].items():
        lines.append(f"### `{t}`")
        lines.append(f"- p99 latency: **{c['latency_p99_diff_ms']['verdict']}** "
                     f"(difference {_iv(c['latency_p99_diff_ms'], ' ms')})")
        lines.append(f"- mean latency: **{c['latency_mean_diff_ms']['verdict']}** "
                     f"(difference {_iv(c['latency_mean_diff_ms'], ' ms')})")
        ld = c["label_distribution"]
        chi = f"chi2 {ld['statistic']:.2f}, dof {ld['dof']}, p {ld['p_value']:.4f}" if "p_value" in ld else "-"
        lines.append(f"- predicted-label distribution: **{ld['verdict']}** ({chi})")
        lines.append(f"- accuracy: **{c['accuracy_diff']['verdict']}** (difference {_iv(c['accuracy_diff'])})")
        lines.append("")
    return "\n".join(lines + audit_lines(r))


def _cs(m: dict[str, Any]) -> str:
    if m["low"] is None and m["high"] is None:
        return "-"
    low = "-inf" if m["low"] is None else f"{m['low']:.4g}"
    high = "+inf" if m["high"] is None else f"{m['high']:.4g}"
    return f"{m['estimate']:.4g}{m['unit']} [{low}, {high}]" if m["estimate"] is not None else f"[{low}, {high}]"


def judge_lines(r: dict[str, Any]) -> list[str]:
    """The anytime-valid verdicts: one table per treatment (metric, verdict, CS of the difference, margin)."""
    if not r.get("judge"):
        return []
    first = next(iter(r["judge"].values()))
    lines = ["", f"## Verdicts (anytime-valid, each treatment vs `{r['control']}`)", "",
             f"Confidence sequences of treatment - control, valid at every look; alpha {r['alpha']:g} family-wise "
             f"over all metrics ({first['alpha_per_metric']:.4g} per metric). \"equivalent within margin\": the "
             "whole interval lies within +-margin.", ""]
    for t, j in r["judge"].items():
        lines += [f"### `{t}`", "", "| metric | verdict | difference [CS] | margin | n control / treatment |",
                  "|---|---|---|---|---|"]
        for name, m in j["metrics"].items():
            lines.append(f"| {name.replace('_', ' ')} | **{m['verdict']}** | {_cs(m)} | +-{m['margin']:g}{m['unit']} | "
                         f"{m['n_control']} / {m['n_treatment']} (min {m['min_samples']}) |")
        lines.append("")
    return lines


def add_drift(report: dict[str, Any], drift: dict[str, dict[str, FeatureDrift]]) -> None:
    """The "drift" section (per arm and feature against the training reference) and each treatment's
    ``drift`` guardrail in the judge's metrics (``experiments.drift.guardrail``)."""
    plain = lambda v: v.item() if isinstance(v, np.generic) else v  # noqa: E731 (numpy bools and floats -> JSON)
    report["drift"] = {arm: {f: {k: plain(v) for k, v in asdict(d).items()} for f, d in feats.items()}
                       for arm, feats in drift.items()}
    control = drift.get(report["control"], {})
    for t, j in report["judge"].items():
        j["metrics"]["drift"] = drift_verdict(control, drift.get(t, {}))


def drift_lines(r: dict[str, Any]) -> list[str]:
    """The Drift section: per arm, each feature's PSI and KS p-value against its version's reference."""
    if "drift" not in r:
        return []
    lines = ["", "## Drift (live traffic against each arm's training reference)", "",
             "PSI on the reference's deciles (labels: categorical) and the two-sample KS test, over the newest "
             "monitored texts; drifted: PSI > 0.2 or KS p < 0.01. Fixed-window monitoring, not a sequential test.", "",
             "| arm | feature | texts | PSI | KS p | drifted |", "|---|---|---|---|---|---|"]
    for arm, feats in r["drift"].items():
        for name, d in feats.items():
            ks = "-" if d["ks_p_value"] is None else f"{d['ks_p_value']:.2g}"
            lines.append(f"| {arm} | {name} | {d['n']} | {d['psi']:.3f} | {ks} | {'**yes**' if d['drifted'] else 'no'} |")
    if not r["drift"]:
        lines.append("| - | no arm has monitored texts yet | | | | |")
    return lines


def audit_lines(r: dict[str, Any]) -> list[str]:
    """Where the data came from, and the weight changes (the store's audit log), when the report has them."""
    lines = [f"Data: {r['data_source']}.", ""] if "data_source" in r else []
    if r.get("audit"):
        lines += ["## Weight changes", "", "| revision | at (UTC) | who | source | why | weights |", "|---|---|---|---|---|---|"]
        lines += [f"| {a['revision']} | {a['at']} | {a['who']} | {a['source']} | {a['why']} | "
                  + ", ".join(f"{k} {v:g}" for k, v in a["weights"].items()) + " |" for a in r["audit"]]
        lines.append("")
    return lines
