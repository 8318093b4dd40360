"""Locust CSV (+ what ``loadtests.run`` saved next to it) -> ``report.md``, ``summary.json`` and PNG plots.

Input, for a prefix ``DIR/locust`` (Locust's ``--csv DIR/locust --csv-full-history``):

- ``locust_stats.csv``: one row per (type, name) -- the locustfile names ``infer`` rows by variant;
- ``locust_stats_history.csv``: the same over time (per second), for throughput and P99 over time;
- ``locust_failures.csv``; ``locust_streams-*.jsonl`` for the chat workload (``loadtests.stream_report``:
  TTFT, ITL, TPOT, e2e, tokens/s and goodput per arm); and, when present, ``locust_stats.json`` (Locust's ``--json-file``: the full
  response-time histogram per variant, for an exact CDF; without it the CDF uses the CSV percentiles);
- from the runner, when present: ``config.json``, ``client_cpu.csv`` (the load generator's CPU),
  ``locust*.log``, ``triton_metrics.json`` and ``router_report.json`` / ``router_report.md``.

Latencies are Locust's: milliseconds, rounded as Locust stores them (integers below 100 ms, two
significant digits above).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from loadtests import plots
from loadtests.chat import CHAT
from loadtests.config import LoadTestConfig, LoadTestError
from loadtests.stream_report import stream_markdown, stream_plots, stream_summary
from tunestack import tracking
from tunestack.bench.streams import SLO

log = logging.getLogger(__name__)

PERCENTILES = ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%")
VARIANT_TYPE = "infer"
VARIANT_TYPES = (VARIANT_TYPE, CHAT)
"""The request types whose rows are named by variant: a prediction, a streamed completion."""
STICKY_TYPE = "sticky"
LOCUST_CPU_WARNINGS = ("CPU usage above", "exceeded cpu threshold")


@dataclass
class StatsRow:
    """One row of Locust's ``_stats.csv``."""

    type: str
    name: str
    requests: int
    failures: int
    rps: float
    mean_ms: float
    min_ms: float
    max_ms: float
    percentiles: dict[str, float | None]

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def is_variant(self) -> bool:
        return self.type in VARIANT_TYPES and not self.name.startswith("(")

    def summary(self) -> dict:
        p = self.percentiles
        return {"requests": self.requests, "failures": self.failures, "error_rate": self.error_rate,
                "throughput_rps": self.rps, "p50_ms": p.get("50%"), "p95_ms": p.get("95%"), "p99_ms": p.get("99%"),
                "mean_ms": self.mean_ms, "max_ms": self.max_ms}


def number(value: str) -> float | None:
    """A Locust CSV cell as a number; None for an empty or ``N/A`` cell."""
    return None if value in ("", "N/A") else float(value)


def read_stats(prefix: Path) -> list[StatsRow]:
    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        raise LoadTestError(f"{path} does not exist; expected Locust's --csv output for prefix {prefix}")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(StatsRow(
                type=r["Type"], name=r["Name"], requests=int(r["Request Count"]), failures=int(r["Failure Count"]),
                rps=float(r["Requests/s"]), mean_ms=float(r["Average Response Time"]),
                min_ms=float(r["Min Response Time"]), max_ms=float(r["Max Response Time"]),
                percentiles={p: number(r[p]) for p in PERCENTILES if p in r}))
    return rows


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


# -- the load generator's CPU ------------------------------------------------------------------------
def cpu_summary(samples: list[dict[str, str]], threshold: float) -> dict[str, dict]:
    """Per process role (``local``, ``master``, ``worker-N``, ``machine``): mean, p95, max and share >= threshold."""
    by_role: dict[str, list[float]] = {}
    for s in samples:
        by_role.setdefault(s["role"], []).append(float(s["cpu_percent"]))
    out = {}
    for role, values in by_role.items():
        ordered = sorted(values)
        out[role] = {"samples": len(values), "mean": sum(values) / len(values),
                     "p95": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
                     "max": ordered[-1], "share_saturated": sum(v >= threshold for v in values) / len(values)}
    return out


def saturation_warnings(cpu: dict[str, dict], threshold: float, fraction: float, locust_log: str = "") -> list[str]:
    """Warnings when the load generator (not the server) was the bottleneck."""
    warnings = []
    for role, s in cpu.items():
        if role == "machine" or s["share_saturated"] < fraction:
            continue
        warnings.append(
            f"The load generator was saturated: Locust process `{role}` used >= {threshold:.0f} % of a CPU core "
            f"in {s['share_saturated']:.0%} of the samples (mean {s['mean']:.0f} %, max {s['max']:.0f} %). "
            "Its latencies then measure the client, not the server: run with more worker processes "
            "(`make loadtest WORKERS=N`), fewer users or a lower rate, or on another machine.")
    machine = cpu.get("machine")
    if machine and machine["share_saturated"] >= fraction:
        warnings.append(
            f"The machine's CPU was >= {threshold:.0f} % busy (all cores) in {machine['share_saturated']:.0%} of the "
            "samples: the load generator and the server competed for the same cores, so neither figure is clean.")
    hits = [line.strip() for line in locust_log.splitlines() if any(w in line for w in LOCUST_CPU_WARNINGS)]
    if hits:
        warnings.append(f"Locust itself warned about its CPU ({len(hits)}x), e.g.: `{hits[0][-160:]}`")
    return warnings


# -- curves --------------------------------------------------------------------------------------
def cdf_from_percentiles(row: StatsRow) -> tuple[list[float], list[float]]:
    points = [(row.min_ms, 0.0)] + [(v, float(p.rstrip("%")) / 100) for p, v in row.percentiles.items()
                                    if v is not None]
    points.sort()
    return [max(ms, 1e-3) for ms, _ in points], [q for _, q in points]


def cdf_from_histogram(histogram: dict[str, int]) -> tuple[list[float], list[float]]:
    """Locust's ``response_times`` ({rounded ms: count}) -> exact empirical CDF over those buckets."""
    items = sorted((float(k), int(v)) for k, v in histogram.items())
    total = sum(c for _, c in items) or 1
    ms, fractions, seen = [max(items[0][0], 1e-3)] if items else [], [0.0] if items else [], 0
    for value, count in items:
        seen += count
        ms.append(max(value, 1e-3))
        fractions.append(seen / total)
    return ms, fractions


def history_series(history: list[dict[str, str]], names: list[str],
                   min_span: float = 1.0) -> tuple[dict, tuple[list, list]]:
    """Per name: time (s), throughput and P99; plus the user count over time.

    Throughput is the request-count difference over spans of at least ``min_span`` seconds: with
    workers, the master's counts only move when a worker reports (every 3 s), so per-second
    differences would alternate between 0 and three times the rate. P99 is Locust's current value;
    0 (no request in its window) is left out.
    """
    if not history:
        return {}, ([], [])
    t0 = min(float(r["Timestamp"]) for r in history)
    series, users = {}, ([], [])
    last: dict[str, tuple[float, int]] = {name: (0.0, 0) for name in names}  # every count starts at 0
    for r in history:
        name = r["Name"]
        t = float(r["Timestamp"]) - t0
        if name == "Aggregated":
            users[0].append(t)
            users[1].append(int(r["User Count"]))
        if name not in names:
            continue
        count = int(r["Total Request Count"])
        prev_t, prev_count = last[name]
        if t - prev_t < min_span - 1e-9:
            continue
        last[name] = (t, count)
        s = series.setdefault(name, {"t": [], "rps": [], "p99": []})
        s["t"].append(t)
        s["rps"].append((count - prev_count) / (t - prev_t))
        p99 = number(r.get("99%", ""))
        s["p99"].append(p99 if p99 else float("nan"))
    return series, users


# -- the report ----------------------------------------------------------------------------------
def summarize(prefix: Path) -> dict:
    """Everything the report shows, as one JSON-able dict (written as ``summary.json``)."""
    prefix = Path(prefix)
    folder = prefix.parent
    config_data = read_json(folder / "config.json")
    cfg = LoadTestConfig.from_settings(config_data) if config_data else LoadTestConfig()
    rows = read_stats(prefix)
    variants = [r for r in rows if r.is_variant]
    aggregated = next((r for r in rows if r.name == "Aggregated"), None)
    history = read_csv(Path(f"{prefix}_stats_history.csv"))
    timestamps = [float(r["Timestamp"]) for r in history]
    cpu = cpu_summary(read_csv(folder / "client_cpu.csv"), cfg.saturation_cpu)
    locust_log = "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("locust*.log")))
    failures = sorted(read_csv(Path(f"{prefix}_failures.csv")), key=lambda r: -int(r["Occurrences"]))
    return {
        "source": str(prefix),
        "config": cfg.to_dict() if config_data else None,
        "run": read_json(folder / "run.json"),
        "duration_s": (max(timestamps) - min(timestamps)) if timestamps else None,
        "variants": {r.name: r.summary() for r in variants},
        "aggregated": aggregated.summary() if aggregated else None,
        "other_requests": {r.name if r.type in ("", r.name) else f"{r.type} {r.name}": r.summary() for r in rows
                           if not r.is_variant and r.name != "Aggregated"},
        "failures": [{"type": f["Method"], "name": f["Name"], "error": f["Error"],
                      "occurrences": int(f["Occurrences"])} for f in failures],
        "variant_switches": sum(r.requests for r in rows if r.type == STICKY_TYPE),
        "exceptions": [{"count": int(e["Count"]), "message": e["Message"]}
                       for e in read_csv(Path(f"{prefix}_exceptions.csv"))],
        "client_cpu": cpu,
        "warnings": saturation_warnings(cpu, cfg.saturation_cpu, cfg.saturation_fraction, locust_log),
        "client_saturated": any(role != "machine" and s["share_saturated"] >= cfg.saturation_fraction
                                for role, s in cpu.items()) or any(w in locust_log for w in LOCUST_CPU_WARNINGS),
        "machine_busy": cpu.get("machine", {}).get("share_saturated", 0.0) >= cfg.saturation_fraction,
        "triton": read_json(folder / "triton_metrics.json"),
        "router_report": read_json(folder / "router_report.json"),
        "generation": stream_summary(prefix, SLO(ttft_ms=cfg.slo_ttft_ms, tpot_ms=cfg.slo_tpot_ms)),
    }


def format_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _variant_table(summary: dict) -> list[str]:
    lines = ["| variant | requests | failures | error rate | throughput (req/s) | P50 ms | P95 ms | P99 ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = list(summary["variants"].items())
    if summary["aggregated"]:
        label = "**all** (Locust's Aggregated, incl. other requests)" if summary["other_requests"] else "**all**"
        rows.append((label, summary["aggregated"]))
    for name, s in rows:
        lines.append(f"| {name} | {s['requests']} | {s['failures']} | {s['error_rate']:.2%} | {s['throughput_rps']:.1f} "
                     f"| {format_ms(s['p50_ms'])} | {format_ms(s['p95_ms'])} | {format_ms(s['p99_ms'])} | {format_ms(s['max_ms'])} |")
    return lines


def _triton_section(triton: dict | None) -> list[str]:
    if not triton:
        return ["Not scraped (no `triton_metrics.json`)."]
    if triton.get("error"):
        return [f"Not available: {triton['error']}"]
    lines = [f"From `{triton.get('url')}`, the counters' increase during the test, per request:", "",
             "| model | version | requests | failures | mean batch | queue ms | compute infer ms | input ms "
             "| output ms | total in Triton ms |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in triton.get("models", []):
        batch = "n/a" if r["mean_batch_size"] is None else f"{r['mean_batch_size']:.2f}"
        lines.append(f"| {r['model']} | {r['version']} | {r['requests']} | {r['failures']} | {batch} "
                     f"| {r['queue_ms']:.2f} | {r['compute_infer_ms']:.2f} | {r['compute_input_ms']:.2f} "
                     f"| {r['compute_output_ms']:.2f} | {r['request_ms']:.2f} |")
    return lines


def _router_section(folder: Path, report: dict | None) -> list[str]:
    md = folder / "router_report.md"
    if md.is_file():  # the router's own rendering, headings moved two levels down
        return [("##" + line) if line.startswith("#") else line for line in md.read_text().splitlines()]
    if report:
        return ["```json", json.dumps(report, indent=2)[:20000], "```"]
    return ["Not fetched (target triton, or the router was not reachable)."]


def render_markdown(summary: dict, folder: Path, images: dict[str, str]) -> str:
    cfg = summary["config"] or {}
    out = [f"# Load test report: {folder.name}", ""]
    for w in summary["warnings"]:
        out += [f"> **Warning:** {w}", ""]
    judged = (summary.get("router_report") or {}).get("judge")
    if judged:
        out += [f"> **The router's judge:** {judged['headline']} (its verdicts: \"The router's statistical "
                "report\" below)", ""]
    if cfg:
        processes = "1" if cfg["workers"] == 1 else f"master + {cfg['workers']} workers"
        mode = (f"open loop, {cfg['arrival_rate']:g} req/s Poisson arrivals from {cfg['users']} generator(s)"
                if cfg["arrival_rate"] > 0 else f"closed loop, {cfg['users']} users, think time {cfg['think_time']:g} s")
        out += ["| setting | value |", "|---|---|",
                f"| target | {cfg['target']} ({cfg['host'] or 'default host'}) |", f"| mode | {mode} |",
                f"| shape | {cfg['shape']} |", f"| run time | {cfg['run_time']} |",
                f"| Locust processes | {processes} |",
                f"| texts | `{cfg['texts']}`, {cfg['batch_size']} per request |", ""]
    duration = summary["duration_s"]
    out += ["## Per variant (client side, Locust)", "",
            (f"Measured over {duration:.0f} s. " if duration else "") + "Latencies in ms as Locust records them (a streamed completion's: its end-to-end latency); "
            "throughput = requests / time between the variant's first and last request.", ""] + _variant_table(summary) + [""]
    if summary["other_requests"]:
        out += ["Other requests:", "", "| request | count | failures | P50 ms | P99 ms |", "|---|---:|---:|---:|---:|"]
        out += [f"| {n} | {s['requests']} | {s['failures']} | {format_ms(s['p50_ms'])} | {format_ms(s['p99_ms'])} |"
                for n, s in summary["other_requests"].items()] + [""]
    if summary.get("variant_switches"):
        out += [f"> **Note:** {summary['variant_switches']} time(s) a user was served by another variant than "
                "before (the `sticky` row). Expected after a weight change (a canary ramp); with fixed weights "
                "the sticky assignment is broken.", ""]
    if summary["failures"]:
        out += ["Failures (most frequent first):", "", "| type | name | error | count |", "|---|---|---|---:|"]
        out += [f"| {f['type']} | {f['name']} | {f['error'][:200].replace('|', '/')} | {f['occurrences']} |"
                for f in summary["failures"][:10]] + [""]
    if summary["exceptions"]:
        out += ["Exceptions raised in the load generator itself (a bug in the locustfile, not a failed request):", ""]
        out += [f"- {e['count']}x `{e['message'][:200]}`" for e in summary["exceptions"][:5]] + [""]
    if summary.get("generation"):
        out += stream_markdown(summary["generation"])
    out += ["## Plots", ""] + [f"![{title}]({file})" for title, file in images.items()] + [""]
    out += ["## Triton (server side, from its metrics)", ""] + _triton_section(summary["triton"]) + [""]
    out += ["## The router's statistical report", ""] + _router_section(folder, summary["router_report"]) + [""]
    if summary["client_cpu"]:
        out += ["## Load generator CPU", "", "Per Locust process (100 % = one core; a Locust process uses one); "
                "`machine` is the whole machine (100 % = all cores).", "",
                "| process | samples | mean % | p95 % | max % | share >= threshold |", "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {role} | {s['samples']} | {s['mean']:.0f} | {s['p95']:.0f} | {s['max']:.0f} | {s['share_saturated']:.0%} |"
                for role, s in summary["client_cpu"].items()] + [""]
    return "\n".join(out)


def build_report(prefix: Path, out_dir: Path | None = None) -> Path:
    """Write ``report.md``, ``summary.json``, ``latency_cdf.png`` and ``over_time.png``; return report.md's path."""
    prefix = Path(prefix)
    out_dir = Path(out_dir or prefix.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(prefix)
    rows = [r for r in read_stats(prefix) if r.is_variant]
    histograms = {e["name"]: e["response_times"] for e in (read_json(Path(f"{prefix}_stats.json")) or [])
                  if e.get("method") in VARIANT_TYPES}
    curves = {r.name: cdf_from_histogram(histograms[r.name]) if r.name in histograms else cdf_from_percentiles(r)
              for r in rows if r.requests}
    images = {}
    if curves:
        plots.latency_cdf(curves, out_dir / "latency_cdf.png", "Latency CDF per variant (client side)")
        images["latency CDF per variant"] = "latency_cdf.png"
    workers = (summary["config"] or {}).get("workers", 1)
    series, users = history_series(read_csv(Path(f"{prefix}_stats_history.csv")), [r.name for r in rows],
                                   min_span=3.0 if workers > 1 else 1.0)
    if series:
        plots.over_time(series, users, out_dir / "over_time.png", "Throughput and P99 over time, per variant")
        images["throughput and P99 over time"] = "over_time.png"
    if summary["generation"]:
        images |= stream_plots(prefix, out_dir)
    summary["plots"] = images
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    path = out_dir / "report.md"
    path.write_text(render_markdown(summary, prefix.parent, images))
    log.info("report written to %s", path)
    tracking.log_loadtest(summary, out_dir)
    return path
