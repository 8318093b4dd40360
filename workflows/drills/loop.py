"""The loop drill: production traffic shifts, feedback retrains the model, the judge decides, under Locust load.

Production serves the run's fp32 export (``DrillConfig.run``) as version 1 on the experiment's first arm; the
second arm (the candidate's slot) stands at weight 0. The router keeps every answer's input (``retain_inputs``).
Locust first sends training reviews in their own wording for ``DrillConfig.loop_clean_s`` seconds, then, from
the shift on, the shifted reviews (``shift.py``: the run's validation split and more training reviews in a
made-up slang), with their labels back as feedback on every answer (``load_phases``). The loop
(``workflows.loop``) watches the store all along; drift or the new-labels trigger (``DrillConfig.loop_labels``)
starts a cycle: data set, fine-tune from production, export, offline gate, publish, canary ramped by the rollout
controller and judged live. Then the load stops, and both versions are measured in process on shifted reviews
never sent (the shift's test part) and on the original held-out set.

The poisoned variant flips 30 % of the labels Locust sends back: it must end with production still serving.
``loop.json`` and ``loop.md`` in ``reports/loop-drill-TIMESTAMP/`` (``loop-poisoned-drill-...``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from experiments.store import default_store_url, open_store
from experiments.store.loop_tables import LoopLog, exposure_by_version
from export.publish import publish
from loadtests.config import LoadTestConfig
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from training.data import Example, read_jsonl, write_jsonl
from workflows.drills.common import EXPERIMENT, Background, DrillConfig, load_config, prepare
from workflows.drills.progressive import locust_totals, stored_answers, wait_for_traffic
from workflows.drills.shift import POISON_SHARE, build_shift
from workflows.loop.dataset import production_splits
from workflows.loop.gate import Predictor, paired_difference, wilson
from workflows.loop.run import RetrainArgs, context, once

ROLLOUT: dict[str, Any] = {"steps": [50, 100], "min_step_requests": 150, "step_timeout_s": 600, "on_timeout": "rollback",
                           "poll_s": 1.0, "guardrails": ["error_rate", "latency_p99"], "success_metrics": ["accuracy"],
                           "judge": {"margins": {"error_rate": 0.01, "latency_p99": 0.05, "accuracy": 0.03}}}
"""The canary: half the traffic, then all of it; promoted when errors and the latency tail are equivalent *and*
the judge finds accuracy from feedback better (the point of a retrained model), rolled back when any of them is
worse or when accuracy is not found better within ``step_timeout_s``. The label mix is not a guardrail here: a
model that has learnt the new words answers with a different mix than one that has not."""


def experiment_spec(cfg: DrillConfig, version: str, folder: Path, loop_overrides: dict[str, Any]) -> dict[str, Any]:
    """The drill's experiment file: two arms on ``version``, kept inputs, the rollout and the loop sections
    (``loop_overrides`` replace the loop section's keys)."""
    train = {"method": cfg.loop_method, "max_steps": cfg.loop_max_steps, "batch_size": cfg.loop_batch_size,
             "eval_every": max(10, cfg.loop_max_steps // 5)}
    if cfg.loop_learning_rate is not None:
        train["learning_rate"] = cfg.loop_learning_rate
    loop = {"production_run": str(cfg.run), "triggers": {"drift": True, "new_labels": cfg.loop_labels},
            "min_examples": min(100, cfg.loop_labels), "train": train, "runs_dir": str(folder / "runs"),
            "repository": str(folder / "model_repository"), "poll_s": 2.0, "lease_s": 300.0, **loop_overrides}
    return {"name": EXPERIMENT, "timeout_s": cfg.timeout_s, "sticky": {"header": "X-User-Id"},
            "arms": [{"name": "production", "model": cfg.model_name, "version": version, "weight": 100},
                     {"name": "candidate", "model": cfg.model_name, "version": version, "weight": 0}],
            "retain_inputs": {"fraction": 1.0, "retention_s": 86400}, "rollout": ROLLOUT, "loop": loop}


async def run_loop(path: Path, url: str, triton_address: str, deadline: float) -> dict[str, Any] | None:
    """Look at the triggers every ``poll_s`` until a cycle ends (its ``end`` output) or ``deadline`` passes."""
    ctx, _ = context(RetrainArgs(experiment=str(path), store=url, triton=triton_address, who="loop-drill"))
    holder, first = f"loop-drill-{secrets.token_hex(4)}", time.time()
    async with open_store(url) as store:
        while time.time() < deadline:
            out = await once(store, ctx, "", holder, first)
            if out is not None:
                return out
            await asyncio.sleep(ctx.cfg.poll_s)
    return None


async def cycle_facts(url: str, since: float) -> dict[str, Any]:
    """The cycle's steps (with when the trigger fired and when the judge decided) and who saw each version."""
    async with open_store(url) as store:
        steps = await LoopLog(store, EXPERIMENT).steps()
        exposure = await exposure_by_version(store, EXPERIMENT, since)
    first = steps[0] if steps else None
    triggered = first.at - first.output.get("seconds", 0.0) if first else None
    canary = next((s.output for s in steps if s.step == "canary"), {})
    return {"steps": {s.step: s.output for s in steps}, "trigger": first.trigger if first else None,
            "triggered_at": triggered, "decided_at": canary.get("decided_at"), "exposure": exposure}


def measure(production: Path, candidate: Path | None, shifted: list[Example], original: list[Example]) -> dict:
    """Accuracy (Wilson 95 % intervals) before (production) and after (the candidate when promoted, else
    production still) on the shifted test reviews and the original held-out set, and the paired difference on
    each (after minus before, per text, with a normal 95 % interval)."""
    out = {}
    models = (Predictor(production), Predictor(candidate) if candidate else None)  # each loaded once
    for name, examples in (("shifted", shifted), ("original", original)):
        before = models[0].correct(examples)
        after = models[1].correct(examples) if models[1] else before
        out[f"accuracy_{name}_before"] = dataclasses.asdict(wilson(int(before.sum()), len(before), 0.95))
        out[f"accuracy_{name}_after"] = dataclasses.asdict(wilson(int(after.sum()), len(after), 0.95))
        out[f"accuracy_{name}_gain"] = dataclasses.asdict(paired_difference(after, before, 0.95))
    return out


def loop_drill(cfg: DrillConfig, poisoned: bool = False, loop_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the drill (see the module docstring); write and return ``loop.json``'s content. ``loop_overrides``:
    keys of the ``loop:`` section to change (a test that switches the offline gate off to reach the canary)."""
    folder, export_cfg = prepare(cfg, "loop-poisoned" if poisoned else "loop")
    splits = production_splits(cfg.run)
    shift = build_shift(splits.train, splits.validation, poisoned)
    write_jsonl(folder / "before.jsonl", shift.before)
    write_jsonl(folder / "traffic.jsonl", shift.traffic)
    write_jsonl(folder / "shifted_test.jsonl", shift.test)
    version = publish(cfg.layout.onnx, "fp32", export_cfg).name
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment_spec(cfg, version, folder, loop_overrides or {}), sort_keys=False))
    url = default_store_url(path)
    with TritonServer(export_cfg.repository, models=[cfg.model_name], log_file=folder / "tritonserver.log") as triton, \
            RouterProcess(path, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url, log_file=folder / "router.log",
                          extra_args=["--model-repository", str(export_cfg.repository)]) as router:
        load = dataclasses.replace(load_config(cfg, router, triton, folder, cfg.loop_load_s), feedback_fraction=1.0)

        def watch(deadline: float) -> dict[str, Any] | None:
            return asyncio.run(run_loop(path, url, triton.http_address, deadline))

        phases = load_phases(cfg, load, folder, url, watch)
    first, last = next(iter(phases.values())), list(phases.values())[-1]
    end, result, shifted_at = last["end"], last["result"], phases.get("shifted", {}).get("at")
    facts = asyncio.run(cycle_facts(url, first["at"]))
    promoted = bool(end and end["outcome"] == "promoted")
    candidate = Path(facts["steps"]["export"]["onnx_dir"]) if promoted else None
    summary = {"drill": "loop-poisoned" if poisoned else "loop", "folder": str(folder), "poisoned": poisoned,
               "promoted": promoted, "outcome": end["outcome"] if end else "no cycle ended within the load",
               "reason": (end or {}).get("reason", ""), "trigger": facts["trigger"],
               **measure(cfg.layout.onnx, candidate, shift.test, read_jsonl(cfg.layout.heldout)),
               "seconds_shift_to_trigger": _since(facts["triggered_at"], shifted_at),
               "seconds_trigger_to_promotion": _since(facts["decided_at"], facts["triggered_at"]) if promoted else None,
               "users_by_version": facts["exposure"], "production_version": version,
               "candidate_version": (end or {}).get("version"),
               **{k: sum(locust_totals(p["result"].folder)[k] for p in phases.values())
                  for k in ("requests", "failed_requests", "feedback", "failed_feedback")},
               "before_shift": {"seconds": cfg.loop_clean_s, **({"loadtest_report": str(b["result"].report),
                                                                **locust_totals(b["result"].folder)}
                                                               if (b := phases.get("before")) else {})},
               "shift": {"words_replaced": len(shift.mapping), "traffic": len(shift.traffic), "test": len(shift.test),
                         "labels_flipped": shift.poisoned, "poison_share": POISON_SHARE if poisoned else 0.0,
                         "examples": dict(list(shift.mapping.items())[:8])},
               "steps": facts["steps"], "loadtest_report": str(result.report), "rate": cfg.rate}
    (folder / "loop.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (folder / "loop.md").write_text(loop_markdown(summary))
    return summary


def load_phases(cfg: DrillConfig, load: LoadTestConfig, folder: Path, url: str,
                watch: Callable[[float], dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """The load before the shift (``cfg.loop_clean_s`` seconds of ``before.jsonl``, when > 0), then the shifted
    load (``traffic.jsonl``, at most ``cfg.loop_load_s``), the loop watching (``watch(deadline)``: the ended
    cycle's output, or None at the deadline) all along; a cycle that ends before the shift ends the drill there.
    Per phase: ``at`` (its first stored answer), ``end`` (the cycle's output) and ``result`` (Locust's run)."""
    phases: dict[str, dict[str, Any]] = {}
    seen = 0
    for name, texts, seconds in (("before", "before.jsonl", cfg.loop_clean_s),
                                 ("shifted", "traffic.jsonl", cfg.loop_load_s)):
        if seconds <= 0:
            continue
        stop = threading.Event()  # the phase's Locust may run a little past its deadline: stopped then
        phase_load = dataclasses.replace(load, texts=str(folder / texts), run_time=f"{int(seconds) + 60}s")
        with Background(phase_load, stop) as background:
            wait_for_traffic(url, background, more_than=seen)
            at = time.time()
            end = watch(at + seconds)
            stop.set()
            phases[name] = {"at": at, "end": end, "result": background.join()}
        if end is not None:
            break
        seen = stored_answers(url)  # the next phase starts at its own first answer
    return phases


def _since(t: float | None, t0: float | None) -> float | None:
    return None if t is None or t0 is None else round(t - t0, 1)


def _acc(a: dict[str, float]) -> str:
    return f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"


def _gain(g: dict[str, float]) -> str:
    return f"{100 * g['value']:+.1f} points [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]"


def loop_markdown(s: dict[str, Any]) -> str:
    users = ", ".join(f"v{v}: {e['users']} users / {e['answers']} answers" for v, e in s["users_by_version"].items())
    gate = s["steps"].get("gate", {})
    return "\n".join([
        f"# Loop drill `{s['drill']}`", "",
        f"Shift: {s['shift']['words_replaced']} polar words replaced by 3 made-up words per side "
        f"({s['shift']['traffic']} shifted reviews sent, {s['shift']['test']} validation reviews kept for measuring), "
        f"after {s['before_shift']['seconds']:g} s of reviews in their own wording "
        f"({s['before_shift'].get('requests', 0)} requests); "
        "labels flipped: "
        f"{s['shift']['labels_flipped']}. Load: {s['rate']:g} requests/s, feedback on every answer.", "",
        f"**{'promoted' if s['promoted'] else 'not promoted'}** ({s['outcome']}); trigger: {s['trigger']}", "",
        f"Why: {s['reason']}", "",
        "| | before | after | after - before (paired, 95 %) |", "|---|---|---|---|",
        f"| accuracy, shifted reviews | {_acc(s['accuracy_shifted_before'])} | {_acc(s['accuracy_shifted_after'])} | "
        f"{_gain(s['accuracy_shifted_gain'])} |",
        f"| accuracy, original held-out | {_acc(s['accuracy_original_before'])} | {_acc(s['accuracy_original_after'])} | "
        f"{_gain(s['accuracy_original_gain'])} |",
        "", f"Seconds from the shift to the trigger: {s['seconds_shift_to_trigger']}; from the trigger to promotion: "
        f"{s['seconds_trigger_to_promotion']}.", "",
        f"Who saw each version: {users}.", "",
        f"Requests: {s['requests']}, failed: {s['failed_requests']}; feedback: {s['feedback']}, failed: "
        f"{s['failed_feedback']}.", "",
        f"Offline gate: {'passed' if gate.get('passed') else 'refused' if gate else 'not reached'}"
        + (f" ({'; '.join(gate.get('reasons', []))})" if gate.get("reasons") else ""), "",
        f"Load-test report: {s['loadtest_report']}", ""])



