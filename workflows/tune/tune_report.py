"""The tuning report: ``tune.json`` (everything), ``tune.md`` (the table) and ``curves.png`` (throughput vs P99
of every config tried, one line per config through its load levels)."""

from __future__ import annotations

import json
from pathlib import Path

from workflows.tune.search import Objective, SearchResult, Trial


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def trial_row(trial: Trial, objective: Objective) -> dict:
    m = trial.measurement
    usable = [lv for lv in m.levels if objective.usable(lv)]
    within = [lv for lv in usable if lv["p99_ms"] <= objective.p99_bound_ms]
    top = max(within, key=lambda lv: lv["throughput_rps"], default=None)
    return {"trial": trial.number, "config": trial.candidate.label(), "candidate": trial.candidate.__dict__,
            "score": trial.score, "error": m.error, "server_cpu_percent": m.server_cpu_percent,
            "best_level": top, "levels": m.levels}


def to_json(result: SearchResult, objective: Objective, settings: dict, published: str | None) -> dict:
    return {"objective": {"kind": objective.kind, "p99_bound_ms": objective.p99_bound_ms, "rate": objective.rate,
                          "description": objective.describe()},
            "settings": settings, "best": result.best.__dict__ if result.best else None,
            "best_label": result.best.label() if result.best else None, "best_score": result.best_score,
            "stopped_by_trial_budget": result.stopped_by_budget, "published_version": published,
            "trials": [trial_row(t, objective) for t in result.trials]}


def render(data: dict) -> str:
    obj = data["objective"]
    lines = [f"# Tuning: {data['settings']['model']} v{data['settings'].get('tuned_version')}", "",
             f"Objective: {obj['description']}. Search: {data['settings']['search']} "
             f"({len(data['trials'])} trials{', stopped by the trial budget' if data['stopped_by_trial_budget'] else ''}). "
             "Load: Locust with the run's held-out reviews on the same machine as the server; latencies exact "
             "from per-request times. Figures are noisy on a shared machine.", "",
             f"**Best: {data['best_label'] or 'none met the objective'}**"
             + (f" -> published as version {data['published_version']}" if data["published_version"] else ""), "",
             "| # | config | score | best req/s (P99 <= bound) | its P50 / P99 ms | its server CPU % | P99 at top load ms | note |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for t in data["trials"]:
        top, last = t["best_level"], (t["levels"] or [{}])[-1]
        mark = " **(best)**" if data["best"] and t["candidate"] == data["best"] else ""
        score = "n/a" if t["score"] is None else f"{t['score']:.1f}"
        tput = "n/a" if top is None else f"{top['throughput_rps']:.1f}"
        lat = "n/a" if top is None else f"{_ms(top['p50_ms'])} / {_ms(top['p99_ms'])}"
        cpu = _pct((top or {}).get("server_cpu_percent"))
        lines.append(f"| {t['trial']} | {t['config']}{mark} | {score} | {tput} | {lat} | {cpu} "
                     f"| {_ms(last.get('p99_ms'))} | {t['error'] or ''} |")
    lines += ["", "Per load level (users in the closed-loop ramp, or the arrival rate):", "",
              "| # | load | req/s | P50 ms | P99 ms | errors | server CPU % |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for t in data["trials"]:
        lines += [f"| {t['trial']} | {lv['load']:g} | {lv['throughput_rps']:.1f} | {_ms(lv['p50_ms'])} | "
                  f"{_ms(lv['p99_ms'])} | {lv['error_rate']:.2%} | {_pct(lv.get('server_cpu_percent'))} |"
                  for lv in t["levels"]]
    lines += ["", "![throughput vs P99 per config](curves.png)", ""]
    return "\n".join(lines)


def plot_curves(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for t in data["trials"]:
        points = [(lv["throughput_rps"], lv["p99_ms"]) for lv in t["levels"] if lv["p99_ms"] is not None]
        if not points:
            continue
        best = data["best"] and t["candidate"] == data["best"]
        ax.plot(*zip(*points, strict=True), marker="o", linewidth=2.5 if best else 1,
                label=f"#{t['trial']} {t['config']}" + (" (best)" if best else ""))
    if data["objective"]["kind"] == "max-throughput":
        ax.axhline(data["objective"]["p99_bound_ms"], color="grey", linestyle="--", label="P99 bound")
    ax.set(xlabel="throughput (req/s)", ylabel="P99 latency (ms)", title="throughput vs P99, every config tried")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(folder: Path, data: dict) -> tuple[Path, Path, Path]:
    paths = folder / "tune.json", folder / "tune.md", folder / "curves.png"
    paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths[1].write_text(render(data))
    plot_curves(data, paths[2])
    return paths
