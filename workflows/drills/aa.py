"""The A/A drill: the judge on real traffic where both arms serve the same model version, read at every look.

Tritonserver serves one published version; the router (its SQLite store, sticky by ``X-User-Id``) sends both
arms to it, so every difference the judge could find is false. Open-loop Locust load whose users differ as
real ones do: each user id draws its reviews from its own window of the held-out texts sorted by label, then
length (they differ in label mix and text length), Zipf activity makes a few users heavy, and every answer
gets feedback. While it runs:

* the drill reads the router's report (the judge on the store's unit table) every ``look_s`` seconds;
* the rollout controller (``python -m serving rollout``) ramps the treatment through its steps, judging the
  same table at each of its own looks.

It passes when no look -- the drill's or the controller's -- says "better", "worse", "different" or "sample
ratio mismatch", and the rollout completes. ``make aa-drill`` runs it on ``runs/$(NAME)`` at a CI size; the
flags make it larger (``--aa-users 2000 --aa-load-s 900 --rate 40``). Report: ``reports/aa-drill-TIMESTAMP/``
(drill.md, drill.json, the rollout's and the load test's reports inside).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from experiments.judge.metrics import FALSE_IN_AA, MISMATCH, VERDICTS
from experiments.rollout.cli import run_rollout
from experiments.rollout.config import RolloutArgs
from experiments.store import default_store_url
from export.publish import publish
from serving.page.snapshot import watch_page
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from workflows.drills.common import EXPERIMENT, Background, DrillConfig, load_config, prepare, write_report
from workflows.drills.progressive import judge_summary, locust_totals, wait_for_traffic

log = logging.getLogger(__name__)

FALSE = tuple(VERDICTS[code] for code in FALSE_IN_AA)
"""Verdicts that are false when both arms serve the same version: "better", "worse", "different"."""

AA_SECTION: dict[str, Any] = {
    "steps": [20, 50, 100], "guardrails": ["error_rate", "latency_p99", "label_distribution"],
    "min_step_requests": 100, "on_timeout": "hold", "poll_s": 2.0,
    "judge": {"quantile": 0.95, "tune_n": 500,
              "margins": {"error_rate": 0.02, "latency_p99": 0.06, "label_distribution": 0.15, "accuracy": 0.1},
              "min_samples": {"error_rate": 200, "latency_mean": 200, "latency_p99": 200, "accuracy": 100,
                              "label_distribution": 200, "confidence_mean": 200}}}
"""The drill's ``rollout:`` section (``step_timeout_s``: half the load). Margins a few minutes of traffic can
reach: the p99 guardrail is the share of answers slower than the control's p95 over its first 200 answers
(at most 6 points more), the label mix within 15 points -- with users who each see mostly one label, the
label shares' intervals are as wide as a few dozen users make them."""


SHOWN = 30
"""Looks drill.md lists (evenly spaced; drill.json has every one)."""


class Looks:
    """Reads the router's report every ``interval`` seconds in a thread, until ``stop()``: one row per look."""

    def __init__(self, url: str, interval: float):
        self.url, self.interval = f"{url}/v2/experiments/{EXPERIMENT}/report", interval
        self.rows: list[dict[str, Any]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aa-looks", daemon=True)

    def __enter__(self) -> Looks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def look(self) -> dict[str, Any] | None:
        """One read of the report: its judge section as a row, or None when the router did not answer."""
        try:
            report = httpx.get(self.url, params={"resamples": 100}, timeout=60, trust_env=False).raise_for_status().json()
        except httpx.HTTPError as e:
            self.errors += 1
            log.warning("A/A look failed: %s", e)
            return None
        row = look_row(report, time.time())
        self.rows.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.look()


def look_row(report: dict[str, Any], t: float) -> dict[str, Any]:
    """A look at a report: the requests and users per arm, the sample-ratio verdict, each metric's verdict, and
    what was false in it."""
    judged = report["judge"] or {}
    sample_ratio = (judged.get("sample_ratio") or {}).get("verdict")
    metrics = {name: m["verdict"] for j in judged.get("treatments", {}).values() for name, m in j["metrics"].items()}
    units = (judged.get("sample_ratio") or {}).get("units", {})
    false = [f"{name} {v}" for name, v in metrics.items() if v in FALSE]
    false += [MISMATCH] if sample_ratio == MISMATCH else []
    return {"t": t, "requests": {a: r["requests"] for a, r in report["arms"].items()},
            "users": {a: int(u["observed"]) for a, u in units.items()}, "sample_ratio": sample_ratio,
            "verdicts": metrics, "headline": judged.get("headline", "no verdicts"), "false": false}


def controller_false(looks: list) -> list[str]:
    """The false verdicts among the rollout controller's own looks (``Outcome.looks``)."""
    out = []
    for look in looks:
        found = [f"{name} {m['verdict']}" for name, m in look.metrics.items() if m["verdict"] in FALSE]
        found += [MISMATCH] if look.sample_ratio == MISMATCH else []
        out += [f"step {look.step}: {f}" for f in found]
    return out


def aa_drill(cfg: DrillConfig, section: dict[str, Any] | None = None, variant: str = "fp32") -> dict:
    """Run the drill (see the module docstring); return its summary (also in ``drill.json``)."""
    folder, export_cfg = prepare(cfg, "aa")
    version = publish(cfg.layout.onnx, variant, export_cfg).name
    section = {**(section or AA_SECTION), "step_timeout_s": cfg.aa_load_s / 2}
    path = folder / "experiment.yaml"
    spec = {"name": EXPERIMENT, "timeout_s": cfg.timeout_s, "sticky": {"header": "X-User-Id"},
            "arms": [{"name": "control", "model": cfg.model_name, "version": version, "weight": 100},
                     {"name": "treatment", "model": cfg.model_name, "version": version, "weight": 0}],
            "rollout": section}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with TritonServer(export_cfg.repository, models=[cfg.model_name], log_file=folder / "tritonserver.log") as triton, \
            RouterProcess(path, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url,
                          log_file=folder / "router.log") as router, \
            watch_page(router.url, EXPERIMENT, folder):
        load = dataclasses.replace(load_config(cfg, router, triton, folder, cfg.aa_load_s), feedback_fraction=1.0,
                                   user_population=cfg.aa_users, user_activity=cfg.aa_activity, user_texts="window",
                                   user_text_window=cfg.aa_text_window)
        with Background(load, threading.Event()) as background:
            wait_for_traffic(default_store_url(path), background)
            with Looks(router.url, cfg.look_s) as looks:
                out, md = run_rollout(RolloutArgs(experiment=str(path), out_dir=str(folder)))
                result = background.join_after(cfg.after_decision_s)
            last = looks.look()  # after the load: every answer in the report
    summary = aa_summary(cfg, folder, looks, last, out, md, result.report, locust_totals(result.folder), version)
    write_report(folder, summary, aa_markdown(summary))
    return summary


def aa_summary(cfg: DrillConfig, folder: Path, looks: Looks, last: dict | None, out, md: Path, loadtest_report: Path,
               totals: dict[str, int], version: str) -> dict:
    rows = looks.rows
    false = [f"look {i + 1}: {f}" for i, row in enumerate(rows) for f in row["false"]]
    false += controller_false(out.looks)
    return {"drill": "aa", "folder": str(folder), "version": version, "rate": cfg.rate, "users": cfg.aa_users,
            "activity": cfg.aa_activity, "text_window": cfg.aa_text_window, "load_s": cfg.aa_load_s,
            "looks": len(rows), "failed_looks": looks.errors, "controller_looks": len(out.looks),
            "false_verdicts": false, "decision": out.result, "step": out.step, "steps": out.steps,
            "reason": out.reason, "revisions": out.revisions, "rollout_report": str(md),
            "loadtest_report": str(loadtest_report), "judge_at_the_end": last, "controller": judge_summary(
                out.verdicts, out.treatment), "look_rows": rows, **totals,
            "passed": not false and out.result == "complete" and bool(rows)}


def aa_markdown(s: dict) -> str:
    verdict = "PASS" if s["passed"] else "FAIL"
    end = s["judge_at_the_end"] or {"headline": "the last look failed", "requests": {}, "users": {}}
    lines = [f"# A/A drill: {verdict}", "",
             f"Both arms serve version {s['version']}. Open-loop load at {s['rate']:g} requests/s for {s['load_s']:g} s "
             f"from {s['users']} user ids (Zipf activity {s['activity']:g}; each user's reviews from its own "
             f"{s['text_window']:.0%} window of the texts sorted by label, then length), feedback on every answer.", "",
             f"- false verdicts (\"better\", \"worse\", \"different\", \"sample ratio mismatch\") over {s['looks']} looks at "
             f"the report and {s['controller_looks']} of the rollout controller: **{len(s['false_verdicts'])}**"
             + ("" if not s["false_verdicts"] else ": " + "; ".join(s["false_verdicts"][:20])),
             f"- the rollout: **{s['decision']}** at step {s['step']}/{len(s['steps'])} "
             f"(steps {', '.join(f'{x:g}' for x in s['steps'])} %); {s['reason']}",
             f"- requests {s['requests']}, failed {s['failed_requests']}, feedback {s['feedback']} (failed "
             f"{s['failed_feedback']}); looks that failed to read the report: {s['failed_looks']}",
             f"- the judge at the end: {end['headline']} (requests {end['requests']}, users {end['users']})", "",
             f"The looks ({SHOWN} evenly spaced, the last, and every one with a false verdict; all in drill.json); "
             "users are counted in the arm where each was first seen:", "",
             "| look | seconds | requests control / treatment | users control / treatment | sample ratio | verdicts |",
             "|---|---|---|---|---|---|"]
    rows = s["look_rows"]
    t0 = rows[0]["t"] if rows else 0.0
    every = max(1, -(-len(rows) // SHOWN))
    for i, row in enumerate(rows):
        if i % every and i != len(rows) - 1 and not row["false"]:
            continue
        req, users = row["requests"], row["users"]
        counts = {v: list(row["verdicts"].values()).count(v) for v in dict.fromkeys(row["verdicts"].values())}
        lines.append(f"| {i + 1} | {row['t'] - t0:.0f} | {req.get('control', 0)} / {req.get('treatment', 0)} | "
                     f"{users.get('control', 0)} / {users.get('treatment', 0)} | {row['sample_ratio']} | "
                     + ", ".join(f"{n} {v}" for v, n in counts.items()) + " |")
    lines += ["", f"Rollout report: {s['rollout_report']}", f"Load-test report: {s['loadtest_report']}", ""]
    return "\n".join(lines)
