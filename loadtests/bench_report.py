"""``make bench``'s ratios, targets and Markdown tables, from the figures ``loadtests.bench`` collected."""

from __future__ import annotations

TARGETS = {"served_vs_inprocess_best": 0.8, "vs_fastapi_ort": 1.3, "vs_litserve": 1.3}
"""The targets for the ratios (served Triton against the in-process best and the peers); P50 at the fixed
rate must also be no higher than FastAPI + ORT's (``p50_vs_fastapi_ort`` <= 1)."""


def _get(data: dict, option: str, *keys: str) -> float | None:
    value = (data.get("served") or {}).get(option)
    for key in keys:
        value = (value or {}).get(key)
    return value


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratios_and_targets(data: dict) -> tuple[dict, dict]:
    """``ratios`` (tuned/published Triton against the others) and whether each target was met (None: not measured)."""
    triton_max = _get(data, "triton", "max_throughput", "throughput_rps")
    inprocess = (data.get("in_process") or {}).get("best_items_per_s")
    ratios = {"served_vs_inprocess_best": _ratio(triton_max, inprocess),
              "vs_fastapi_ort": _ratio(triton_max, _get(data, "fastapi-ort", "max_throughput", "throughput_rps")),
              "vs_litserve": _ratio(triton_max, _get(data, "litserve", "max_throughput", "throughput_rps")),
              "tuned_vs_published": _ratio(triton_max, _get(data, "triton-published", "max_throughput", "throughput_rps")),
              "vs_router": _ratio(triton_max, _get(data, "router", "max_throughput", "throughput_rps")),
              "vs_baseline": _ratio(triton_max, _get(data, "baseline", "max_throughput", "throughput_rps")),
              "p50_vs_fastapi_ort": _ratio(_get(data, "triton", "fixed_rate", "p50_ms"),
                                           _get(data, "fastapi-ort", "fixed_rate", "p50_ms")),
              "cpu_vs_fastapi_ort": _ratio(_get(data, "triton", "fixed_rate", "server_cpu_percent"),
                                           _get(data, "fastapi-ort", "fixed_rate", "server_cpu_percent"))}
    targets = {name: None if ratios[name] is None else ratios[name] >= goal for name, goal in TARGETS.items()}
    p50 = ratios["p50_vs_fastapi_ort"]
    targets["p50_vs_fastapi_ort"] = None if p50 is None else p50 <= 1.0
    return ratios, targets


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} %"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _served_table(data: dict) -> list[str]:
    cfg, served = data["config"], data["served"]
    triton_max = _get(data, "triton", "max_throughput", "throughput_rps")
    t = data.get("triton") or {}
    names = {"triton": f"Triton v{t.get('version')} {t.get('variant') or ''} ({t.get('settings')})",
             "router": "router -> that Triton", "fastapi-ort": f"FastAPI + ORT (batch 1, {cfg['threads']} threads)",
             "litserve": f"LitServe + ORT (batching {cfg['litserve_max_batch_size']}, "
                         f"{cfg['litserve_batch_timeout'] * 1000:g} ms)",
             "baseline": f"transformers pipeline, torch fp32 ({cfg['threads']} threads)"}
    published = t.get("published")
    if isinstance(published, dict):
        names["triton-published"] = f"Triton v{published['version']} as published ({published['settings']})"
    bound = cfg["p99_bound_ms"]
    lines = [f"| option | P50 / P99 ms at {cfg['rate']:g} req/s | max req/s (P99 <= {bound:g} ms) | at users "
             f"| Triton vs it | server CPU at {cfg['rate']:g} req/s (% of one core) | warnings |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in served.items():
        fr, mx = r["fixed_rate"], r["max_throughput"]
        flags = [f for f, key in (("client saturated", "client_saturated"), ("machine busy", "machine_busy"))
                 if any(run[key] for run in [fr, *r["levels"]])]
        errors = fr["error_rate"] + sum(lv["error_rate"] for lv in r["levels"])
        if errors:
            flags.append("errors")
        tput = "n/a" if mx["throughput_rps"] is None else f"{mx['throughput_rps']:.0f}"
        cpu = "n/a" if fr["server_cpu_percent"] is None else f"{fr['server_cpu_percent']:.0f} %"
        vs = "1.00" if name == "triton" else _x(_ratio(triton_max, mx["throughput_rps"]))
        lines.append(f"| {names.get(name, name)} | {_ms(fr['p50_ms'])} / {_ms(fr['p99_ms'])} | {tput} "
                     f"| {mx['users'] or 'n/a'} | {vs} | {cpu} | {', '.join(flags) or '-'} |")
    return lines


def render(data: dict) -> str:
    """The bench's Markdown below the harness's title and machine line (``tunestack.bench.BenchRun``)."""
    cfg = data["config"]
    lines = ["Locust runs on the same machine as the servers; percentiles are exact (every request's own time).", ""]
    if data.get("served"):
        lines += ["## Served (Locust, real held-out reviews, one per request)", "",
                  f"P50/P99 and server CPU at {cfg['rate']:g} req/s (Poisson, {cfg['rate_time']}); maximum "
                  f"throughput with P99 <= {cfg['p99_bound_ms']:g} ms (closed loop, users {cfg['users']}, "
                  f"{cfg['level_time']} each). Server CPU: psutil over the server's process tree (the router row: "
                  "router + Triton); 100 % = one core busy.", "", *_served_table(data), ""]
    if data.get("in_process"):
        ip = data["in_process"]
        lines += ["## In process, no server (the same version's files, real reviews)", "",
                  "| code | batch | items/s | P50 ms per call | P99 ms per call |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['code']} ({r['threads']} threads) | {r['batch_size']} | {r['items_per_s']:.0f} "
                  f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in ip["rows"]]
        lines += ["", f"Best: {ip['best']}, {ip['best_items_per_s']:.0f} items/s.", ""]
    lines += ["## Ratios and targets", "", "| ratio | value | target | met |", "|---|---:|---|---|"]
    goals = {"served_vs_inprocess_best": ">= 0.8", "vs_fastapi_ort": ">= 1.3", "vs_litserve": ">= 1.3",
             "p50_vs_fastapi_ort": "<= 1.0"}
    for name, value in data["ratios"].items():
        met = data["targets"].get(name)
        lines.append(f"| {name} | {_x(value)} | {goals.get(name, '-')} | "
                     f"{'-' if name not in goals else 'n/a' if met is None else 'yes' if met else 'no'} |")
    if data.get("served"):
        lines += ["", "Per level (closed loop; Locust CPU: what the load generator itself used, % of one core):", "",
                  "| option | users | req/s | P50 ms | P99 ms | errors | Locust CPU |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in data["served"].items():
            lines += [f"| {name} | {lv['users']} | {lv['throughput_rps']:.1f} | {_ms(lv['p50_ms'])} | "
                      f"{_ms(lv['p99_ms'])} | {lv['error_rate']:.2%} | {_pct(lv.get('locust_cpu_percent'))} |"
                      for lv in r["levels"]]
    return "\n".join(lines) + "\n"
