"""The progressive-rollout drills: ``python -m serving rollout``'s controller ramps a candidate under Locust load.

Each drill publishes a control and a candidate into its own fresh model repository, starts tritonserver
and the router (its experiment store: SQLite beside the experiment file), runs open-loop Locust load that
sends the true label back for every answer (accuracy from feedback), and runs the rollout controller
until it completes, rolls back or holds. The drills on the real model (``make rollout-drills``):

* ``good``: int8 behind the fp32 control; expected: promoted to 100 % with 0 failed requests;
* ``bad``: the fp32 export of an adapter trained for a few steps only (``DrillConfig.bad_run``) behind
  the fp32 control; expected: rolled back at its first step on accuracy from feedback;
* ``slow``: fp32 as the candidate behind an int8 control, p99 margin 0.01 (the default: at most one point more
  answers slower than the control's p99); expected: rolled back on p99.

``ArmSource`` names what each arm serves, so the tests can build controllable candidates on the tiny
model (flipped labels, a deliberately delayed model) with the same drill.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.rollout.cli import run_rollout
from experiments.rollout.config import RolloutArgs
from experiments.store import default_store_url, open_store
from export.config import ExportConfig
from export.contract import CONTRACT
from export.publish import publish
from loadtests.loadtest_report import read_stats
from loadtests.run import PREFIX
from serving.page.snapshot import watch_page
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack.layout import RunLayout
from tunestack.procs import wait_for
from workflows.drills.common import EXPERIMENT, Background, DrillConfig, load_config, prepare, write_report

ROLLOUT_DRILLS = ("good", "bad", "slow")
EXPECTED = {"good": "complete", "bad": "rollback", "slow": "rollback"}
"""The decision each drill expects of the controller."""
FEEDBACK_ROW = "feedback"
"""The name of the feedback posts' row in Locust's statistics (``loadtests.locustfile.FEEDBACK``; importing
the locustfile here would monkey-patch this process with gevent)."""

BASE_SECTION: dict[str, Any] = {"steps": [25, 50, 100], "min_step_requests": 100, "step_timeout_s": 200,
                                "on_timeout": "hold", "poll_s": 1.0,
                                "judge": {"margins": {"error_rate": 0.01, "latency_p99": 0.02,
                                                      "label_distribution": 0.1, "accuracy": 0.03}}}
"""The real-model drills' ``rollout:`` section; ``slow`` narrows the p99 margin (a share of answers slower than
the control's p99) to the default 0.01. The first step is 25 %: at ``DrillConfig.rate`` 40/s the candidate then
serves the 500 answers the tail share needs in about a minute (at 1 % it would take an hour), and the error-rate
and label-mix intervals narrow to their margins in a few."""


@dataclass(frozen=True)
class ArmSource:
    """What one arm serves: a variant of an export folder, published as a version of ``model``."""

    name: str
    onnx_dir: Path
    variant: str
    """fp32, int8 or int8-static (as the export wrote them)."""
    model: str = CONTRACT.default_model_name
    max_queue_delay_us: int | None = None
    """Triton's dynamic-batching delay for this model (a single request waits it: a deliberately slow arm)."""


def flipped_export(onnx_dir: Path, dest: Path) -> Path:
    """A copy of an export whose label names are reversed: the same model, every prediction's name flipped."""
    shutil.copytree(onnx_dir, dest)
    label_map = dest / CONTRACT.label_map_file
    data = json.loads(label_map.read_text())
    label_map.write_text(json.dumps({**data, "labels": list(reversed(data["labels"]))}))
    return dest


def real_setup(cfg: DrillConfig, drill: str) -> tuple[list[ArmSource], dict[str, Any]]:
    """The arms and ``rollout:`` section of a drill on the real model (``cfg.run``; ``cfg.bad_run`` for bad)."""
    onnx, section = cfg.layout.onnx, json.loads(json.dumps(BASE_SECTION))
    if drill == "good":
        return [ArmSource("fp32", onnx, "fp32"), ArmSource("int8", onnx, "int8")], section
    if drill == "bad":
        return [ArmSource("fp32", onnx, "fp32"), ArmSource("few-steps", RunLayout(cfg.bad_run).onnx, "fp32")], section
    if drill == "slow":
        section["judge"]["margins"]["latency_p99"] = 0.01
        return [ArmSource("int8", onnx, "int8"), ArmSource("fp32", onnx, "fp32")], section
    raise ValueError(f"unknown rollout drill {drill!r}; expected one of {list(ROLLOUT_DRILLS)}")


def _publish(arms: list[ArmSource], export_cfg: ExportConfig) -> list[tuple[str, str, str]]:
    """Publish every arm; return (arm name, model, version)."""
    out = []
    for arm in arms:
        cfg = dataclasses.replace(export_cfg, model_name=arm.model, max_queue_delay_us=arm.max_queue_delay_us)
        out.append((arm.name, arm.model, publish(arm.onnx_dir, arm.variant, cfg).name))
    return out


def locust_totals(folder: Path) -> dict[str, int]:
    rows = {r.name: r for r in read_stats(folder / PREFIX)}
    total, feedback = rows["Aggregated"], rows.get(FEEDBACK_ROW)
    fb_requests, fb_failures = (feedback.requests, feedback.failures) if feedback else (0, 0)
    return {"requests": total.requests - fb_requests, "failed_requests": total.failures - fb_failures,
            "feedback": fb_requests, "failed_feedback": fb_failures}


def stored_answers(url: str) -> int:
    """The drill experiment's answers in the store at ``url`` now."""

    async def count() -> int:
        async with open_store(url) as store:
            return await store.count_answers(EXPERIMENT)

    return asyncio.run(count())


def wait_for_traffic(url: str, background: Background, deadline_s: float = 120.0, more_than: int = 0) -> None:
    """Return once the router has stored more than ``more_than`` answers (this load is up), so no step's clock
    runs without load."""

    def answered() -> bool:
        if not background.thread.is_alive():
            raise RuntimeError(f"the load test ended before the router stored an answer of it in {url}; "
                               "see the drill folder's router.log and the load test's logs")
        return stored_answers(url) > more_than

    wait_for(answered, deadline_s, f"an answer in the store {url} (see the drill folder's router.log)", interval=0.5)


def rollout_drill_run(cfg: DrillConfig, drill: str, arms: list[ArmSource], section: dict[str, Any],
                      load_s: float) -> dict:
    """Run one drill: ``arms[0]`` the control at 100 %, ``arms[1]`` the candidate ramped by the controller."""
    folder, export_cfg = prepare(cfg, f"rollout-{drill}")
    published = _publish(arms, export_cfg)
    path = folder / "experiment.yaml"
    spec = {"name": EXPERIMENT, "timeout_s": cfg.timeout_s, "sticky": {"header": "X-User-Id"},
            "arms": [{"name": n, "model": m, "version": v, "weight": 100 if i == 0 else 0}
                     for i, (n, m, v) in enumerate(published)], "rollout": section}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    models = sorted({a.model for a in arms})
    with TritonServer(export_cfg.repository, models=models, log_file=folder / "tritonserver.log") as triton, \
            RouterProcess(path, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url,
                          log_file=folder / "router.log") as router, \
            watch_page(router.url, EXPERIMENT, folder):
        load = dataclasses.replace(load_config(cfg, router, triton, folder, load_s), feedback_fraction=1.0)
        with Background(load, threading.Event()) as background:
            wait_for_traffic(default_store_url(path), background)
            out, md = run_rollout(RolloutArgs(experiment=str(path), out_dir=str(folder)))
            result = background.join_after(cfg.after_decision_s)
    summary = {"drill": f"rollout-{drill}", "folder": str(folder), "rollout_report": str(md),
               "loadtest_report": str(result.report), "rate": cfg.rate, "control": out.control,
               "candidate": out.treatment, "decision": out.result, "step": out.step, "steps": out.steps,
               "percent": out.percent, "reason": out.reason, "decided_in_s": out.decided_in_s, "rollout_s": out.duration_s,
               "candidate_requests": out.treatment_requests, "candidate_users": out.treatment_users,
               "revisions": out.revisions, "judge": judge_summary(out.verdicts, out.treatment),
               **locust_totals(result.folder)}
    write_report(folder, summary, drill_markdown(summary))
    return summary


def judge_summary(verdicts: dict[str, Any] | None, treatment: str) -> dict[str, Any]:
    """The judge at a drill's last look: its headline, the sample-ratio check, each metric's verdict."""
    if not verdicts:
        return {"headline": "no look at the evidence", "sample_ratio": None, "verdicts": {}}
    metrics = verdicts["treatments"].get(treatment, {}).get("metrics", {})
    return {"headline": verdicts["headline"], "sample_ratio": verdicts["sample_ratio"]["verdict"],
            "verdicts": {name: m["verdict"] for name, m in metrics.items()}}


def progressive_drill(cfg: DrillConfig, drill: str) -> dict:
    """A drill on the real model: ``good``, ``bad`` or ``slow`` (see the module docstring)."""
    arms, section = real_setup(cfg, drill)
    return rollout_drill_run(cfg, drill, arms, section, cfg.rollout_load_s)


def drill_markdown(s: dict) -> str:
    decided = f"{s['decided_in_s']:.1f}" if s["decided_in_s"] is not None else "-"
    return "\n".join([
        f"# Rollout drill `{s['drill']}`", "",
        f"`{s['candidate']}` behind the control `{s['control']}`, steps {', '.join(f'{x:g}' for x in s['steps'])} %, "
        f"open-loop load at {s['rate']:g} requests/s with feedback on every answer.", "",
        "| decision | at step | candidate requests / users | seconds to decide (at its step) | rollout seconds | requests "
        "| failed | feedback failed |",
        "|---|---|---|---|---|---|---|---|",
        f"| **{s['decision']}** | {s['step']}/{len(s['steps'])} ({s['steps'][s['step'] - 1]:g} %) | "
        f"{s['candidate_requests']} / {s['candidate_users']} | {decided} | {s['rollout_s']:.1f} | {s['requests']} | "
        f"{s['failed_requests']} | {s['failed_feedback']} |",
        "", f"Why: {s['reason']}", "", f"Judge at the last look: {s['judge']['headline']}", "",
        f"Rollout report: {s['rollout_report']}", f"Load-test report: {s['loadtest_report']}", ""])
