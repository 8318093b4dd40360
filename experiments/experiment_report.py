"""The experiment report: the anytime-valid judge's verdicts, then what each arm served.

The verdicts are the judge's (``experiments.judge``), under ``judge``: ``Verdicts.to_dict()`` of a ``UnitTable`` --
the experiment store's (every replica's traffic: every replica and ``python -m serving report --store`` give
the same verdicts) or, without a store, this replica's in-memory ``Judge``. The unit of analysis is the unit
of assignment (the sticky key), the arms are compared within each period of constant weights, the p99
guardrail is the share of answers slower than a tail threshold, and the sample-ratio check comes first.
Each verdict is valid at every look: read the report as often as you like.

Per arm the report also describes what was served: counts, errors, latency quantiles, predicted labels,
accuracy from feedback, shadow agreement. Their intervals (bootstrap for quantiles, Wilson for proportions)
treat each request as independent, which sticky users are not: they describe, they do not decide.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

import numpy as np

from experiments import arm_intervals as stats
from experiments.arm_record import ArmRecord
from experiments.drift.guardrail import drift_verdict
from experiments.drift.monitor import FeatureDrift
from experiments.judge import JudgeConfig, UnitTable, judge
from experiments.judge.units import LATENCY_CAP_MS
from experiments.spec import Experiment

QUANTILES = (0.5, 0.95, 0.99)

MEANINGS = {
    "error_rate": "server errors (5xx) per request; the callers' 4xx never count",
    "latency_mean": f"mean latency, each answer's clipped at {LATENCY_CAP_MS:,.0f} ms",
    "latency_p99": "",  # with its threshold: p99_meaning()
    "accuracy": "correct answers per feedback",
    "label_distribution": "each predicted label's share (the label that moved most shown)",
    "confidence_mean": "mean top-class probability",
    "ttft_mean": "mean time to first token (request in -> the model's first token, at the router)",
    "itl_mean": "mean inter-token latency: every gap between tokens / the gaps",
    "output_tokens_mean": "mean tokens per answer",
    "tokens_per_s": "output tokens per second of stream (tokens / (request in -> last token))",
    "quality": "mean quality feedback in [0, 1]: a rating, or ROUGE-L F against a reference",
    "drift": "inputs and predictions against the training reference (largest PSI; a monitoring rule, outside alpha)",
}
"""What each metric of the judge's table measures, for the Markdown report."""


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
    if rec.generation is not None:
        out["generation"] = rec.generation.to_dict()
    return out


def unit_of_analysis(exp: Experiment) -> str:
    """The unit of analysis in words: the experiment's sticky key."""
    if exp.sticky.source is None:
        return "the request: this experiment assigns every request at random (no sticky key)"
    where = "header" if exp.sticky.source == "header" else "request parameter"
    return (f"the user: the sticky key (the {where} `{exp.sticky.key}`); all of a key's requests go to one arm, so "
            "keys, not requests, are the independent units. A request without a key is a unit of its own")


def build_report(exp: Experiment, snapshot: dict[str, dict], table: UnitTable | None, alpha: float = 0.05,
                 resamples: int = 2000, rng: np.random.Generator | None = None,
                 drift: dict[str, dict[str, FeatureDrift]] | None = None,
                 config: JudgeConfig | None = None) -> dict[str, Any]:
    """The report as a JSON-able dict.

    ``snapshot``: a ``Recorder.snapshot()`` or a ``Store.snapshot()`` (whose ``"feedback"`` counts of pending
    and expired feedback it copies), for the per-arm description. ``table``: the judge's data (the store's
    ``unit_table``, or the recorder's), its ``periods`` each period's weights; None when there is none (the
    store is unavailable): then ``judge`` is None. ``config``: the judge's settings (default: ``alpha``'s).
    ``drift`` (``DriftFeed.report()``) adds the "drift" section and a ``drift`` guardrail per treatment.
    """
    rng = rng or np.random.default_rng(0)
    config = config or JudgeConfig(alpha=alpha)
    arms, shadows = snapshot["arms"], snapshot["shadow"]
    empty = ArmRecord(latency=np.empty(0))
    report: dict[str, Any] = {
        "experiment": exp.name,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "alpha": config.alpha,
        "control": exp.arms[0].name,
        "unit_of_analysis": unit_of_analysis(exp),
        "tail": {"quantile": config.quantile, "answers": config.min_samples.latency_p99},
        "periods": None if table is None else {str(p): dict(w) for p, w in sorted(table.periods.items())},
        "judge": None if table is None else judge(table, config).to_dict(),
        "arms": {a: _arm(arms.get(a, empty), exp.shares.get(a), alpha, resamples, rng)
                 for a in [*exp.arm_names, *[x for x in arms if x not in exp.arm_names]]},
        "shadow": {},
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


def generation_lines(r: dict[str, Any]) -> list[str]:
    """The generative arms' stream figures (``experiments.generation``), when any arm has them."""
    rows = {name: a["generation"] for name, a in r["arms"].items() if a.get("generation")}
    if not rows:
        return []

    def num(x: float | None, digits: int = 2) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    lines = ["", "Generation (the router's timing of each stream it relayed, from the request's arrival):", "",
             "| arm | streams | mean TTFT ms | mean ITL ms | output tokens | mean output tokens | tokens/s "
             "| quality (n) |", "|---|---|---|---|---|---|---|---|"]
    for name, g in rows.items():
        lines.append(f"| {name} | {g['streams']} | {num(g['ttft_mean_ms'])} | {num(g['itl_mean_ms'])} | "
                     f"{g['output_tokens']} | {num(g['output_tokens_mean'])} | {num(g['tokens_per_s'], 1)} | "
                     f"{num(g['quality_mean'], 3)} ({g['quality_n']}) |")
    return lines


def _iv(d: dict | None, unit: str = "") -> str:
    if not d or "estimate" not in d:
        return "-"
    return f"{d['estimate']:.3f}{unit} [{d['low']:.3f}, {d['high']:.3f}]"


def render_markdown(r: dict[str, Any]) -> str:
    """The report for a person: the judge's headline, its verdicts and what they mean, then the arms."""
    headline = r["judge"]["headline"] if r.get("judge") else "No verdicts: the judge's unit table is unavailable."
    lines = [f"# Experiment `{r['experiment']}`", "", f"**{headline}**", "",
             f"Generated {r['generated_at']}; control: `{r['control']}`.", ""]
    lines += judge_lines(r)
    lines += ["", "## Arms", "",
              "What each arm served. The intervals here treat requests as independent (95 %); with sticky users "
              "they are too narrow, so they describe and decide nothing: the verdicts above do.", "",
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
    lines += generation_lines(r)
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
    lines += drift_lines(r)
    return "\n".join(lines + [""] + audit_lines(r))


def _cs(m: dict[str, Any]) -> str:
    if m["low"] is None and m["high"] is None:
        return "-"
    low = "-inf" if m["low"] is None else f"{m['low']:.4g}"
    high = "+inf" if m["high"] is None else f"{m['high']:.4g}"
    return f"{m['estimate']:.4g}{m['unit']} [{low}, {high}]" if m["estimate"] is not None else f"[{low}, {high}]"


def p99_meaning(m: dict[str, Any], control: str, quantile: float) -> str:
    """``latency_p99`` in words: the share of answers slower than T ms, and what T is."""
    q = f"p{quantile * 100:g}"
    if m.get("threshold_ms") is None:
        return (f"share of answers slower than T ms, T = `{control}`'s {q} over its first {m['min_samples']} answers "
                "(not set yet)")
    return (f"share of answers slower than {m['threshold_ms']:g} ms (`{control}`'s {q} over its first "
            f"{m['min_samples']} answers, on the latency grid)")


def _sample_ratio_lines(s: dict[str, Any]) -> list[str]:
    lines = [f"### Sample ratio: **{s['verdict']}**", "",
             f"Does the split match the weights? Units (each counted once, where first seen) e-value "
             f"{s['units_evalue']:.3g} (a mismatch at {s['units_threshold']:.3g}); requests: each arm's share "
             f"against its configured share, per period, with the variance over units. Alpha {s['alpha']:.3g}.", "",
             "| arm | units observed / expected | requests observed / expected share | requests: observed - "
             "expected [CS] |", "|---|---|---|---|"]
    for arm, u in s["units"].items():
        req = s["requests"].get(arm, {})
        cs = _cs({"unit": "", **req}) if "estimate" in req else "-"
        lines.append(f"| {arm} | {u['observed']:.0f} / {u['expected']:.1f} | {req.get('observed_share', 0):.4f} / "
                     f"{req.get('expected_share', 0):.4f} | {cs} |")
    return lines + [""]


def judge_lines(r: dict[str, Any]) -> list[str]:
    """The judge's section: the unit of analysis, periods, the sample-ratio check, then one table per
    treatment (metric, what it measures, verdict, CS of the difference, margin, units, design effect)."""
    j = r.get("judge")
    if not j:
        return ["## Verdicts", "", "None: the judge reads the experiment store's unit table, and it is unavailable "
                "(the figures below are this replica's alone)."]
    first = next(iter(j["treatments"].values()), None)
    level = f" ({first['alpha_per_metric']:.4g} per check)" if first else ""
    lines = [f"## Verdicts (anytime-valid, each treatment vs `{r['control']}`)", "",
             f"Confidence sequences (CS) of treatment - control, valid at every look; alpha {r['alpha']:g} "
             f"family-wise over every metric of every treatment and the sample-ratio check{level}. "
             "\"equivalent within margin\": the whole CS lies within +-margin.", ""]
    if "unit_of_analysis" in r:
        lines += [f"Unit of analysis: {r['unit_of_analysis']}.", ""]
    if r.get("periods"):
        lines += ["Periods (stretches of constant weights; the arms are compared within each, then combined): "
                  + "; ".join(f"{p}: " + ", ".join(f"{a} {w:g}" for a, w in ws.items()) for p, ws in r["periods"].items())
                  + ".", ""]
    lines += _sample_ratio_lines(j["sample_ratio"])
    quantile = r.get("tail", {}).get("quantile", 0.99)
    for t, judged in j["treatments"].items():
        lines += [f"### `{t}`", "", "| metric | what it measures | verdict | difference [CS] | margin "
                  "| units control / treatment | n control / treatment (min) | design effect |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in judged["metrics"].items():
            meaning = p99_meaning(m, r["control"], quantile) if name == "latency_p99" else MEANINGS.get(name, "")
            units = f"{m['units_control']} / {m['units_treatment']}" if "units_control" in m else "-"
            deff = f"{m['design_effect']:.2f}" if m.get("design_effect") is not None else "-"
            lines.append(f"| {name.replace('_', ' ')} | {meaning} | **{m['verdict']}** | {_cs(m)} | "
                         f"+-{m['margin']:g}{m['unit']} | {units} | {m['n_control']} / {m['n_treatment']} "
                         f"({m['min_samples']}) | {deff} |")
        lines.append("")
    return lines


def add_drift(report: dict[str, Any], drift: dict[str, dict[str, FeatureDrift]]) -> None:
    """The "drift" section (per arm and feature against the training reference) and each treatment's
    ``drift`` guardrail beside the judge's metrics (``experiments.drift.guardrail``)."""
    plain = lambda v: v.item() if isinstance(v, np.generic) else v  # noqa: E731 (numpy bools and floats -> JSON)
    report["drift"] = {arm: {f: {k: plain(v) for k, v in asdict(d).items()} for f, d in feats.items()}
                       for arm, feats in drift.items()}
    control = drift.get(report["control"], {})
    for t, j in (report["judge"] or {}).get("treatments", {}).items():
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
