"""The ramp drill: publish a new version under load, load it, ramp it 0 -> 10 -> 50 -> 100 %, unload the old one."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict

import httpx

from experiments.spec import write_experiment
from export.publish import publish
from serving.page.snapshot import watch_page
from serving.repository import ModelRepository
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from workflows.drills.common import (
    EXPERIMENT,
    Background,
    DrillConfig,
    fill_steps,
    history,
    load_config,
    prepare,
    run_steps,
    wait_for_load,
    write_report,
)


def ramp_drill(cfg: DrillConfig) -> dict:
    """v1 serves; publish v2, load it, ramp it 0 -> 10 -> 50 -> 100 %, unload v1; all under load."""
    folder, export_cfg = prepare(cfg, "ramp")
    repository = export_cfg.repository
    old = publish(cfg.layout.onnx, "fp32", export_cfg).name
    experiment = write_experiment(folder / "experiment.yaml", EXPERIMENT, [("stable", old, 100), ("canary", str(int(old) + 1), 0)],
                                  cfg.model_name, cfg.timeout_s)
    token = secrets.token_urlsafe(16)
    (folder / "admin-token").write_text(token)
    n_steps = 6
    with TritonServer(repository, models=[cfg.model_name], log_file=folder / "tritonserver.log") as triton, \
            RouterProcess(experiment, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url,
                          admin_token_file=folder / "admin-token",
                          log_file=folder / "router.log") as router, \
            watch_page(router.url, EXPERIMENT, folder), \
            ModelRepository(triton.http_address, repository) as models, \
            httpx.Client(base_url=router.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as admin:

        def weights(stable: float, canary: float) -> Callable[[], dict]:
            def act() -> dict:
                r = admin.put(f"/v2/experiments/{EXPERIMENT}/weights", json={"weights": {"stable": stable, "canary": canary}})
                r.raise_for_status()
                return {"weights": {"stable": stable, "canary": canary}}
            return act

        def publish_and_load() -> dict:
            new = publish(cfg.layout.onnx, "int8", export_cfg).name
            t0 = time.monotonic()
            models.load(cfg.model_name)  # config.pbtxt's policy: the newest versions, old and new
            return {"published": new, "load_seconds": round(time.monotonic() - t0, 2),
                    "ready_versions": models.ready_versions(cfg.model_name)}

        def unload_old() -> dict:
            models.load(cfg.model_name, versions=[int(old) + 1])
            return {"ready_versions": models.ready_versions(cfg.model_name)}

        plan = [(f"v{old} only (canary 0 %)", lambda: None), ("publish + load the new version", publish_and_load),
                ("canary 10 %", weights(90, 10)), ("canary 50 %", weights(50, 50)), ("canary 100 %", weights(0, 100)),
                (f"unload v{old}", unload_old)]
        load = load_config(cfg, router, triton, folder, cfg.step_s * n_steps + 4)
        with Background(load) as background:
            wait_for_load(router.url)
            steps = run_steps(plan, cfg.step_s)
            result = background.join()
    fill_steps(steps, history(result.folder))
    summary = {"drill": "ramp", "folder": str(folder), "loadtest_report": str(result.report),
               "rate": cfg.rate, "failed_requests": sum(s.failures for s in steps),
               "requests": sum(s.requests for s in steps), "steps": [asdict(s) for s in steps]}
    write_report(folder, summary, ramp_markdown(summary))
    return summary


def ramp_markdown(s: dict) -> str:
    lines = [f"# Ramp drill\n\n{s['requests']} requests at {s['rate']:.0f}/s, **{s['failed_requests']} failed** "
             "(target: 0).\n", "| step | requests | failed | P99 ms (last 10 s) | notes |", "|---|---|---|---|---|"]
    for st in s["steps"]:
        p99 = f"{st['p99_ms']:.0f}" if st["p99_ms"] is not None else "n/a"
        lines.append(f"| {st['name']} | {st['requests']} | {st['failures']} | {p99} | {json.dumps(st['notes']) if st['notes'] else ''} |")
    lines.append(f"\nLoad-test report: {s['loadtest_report']}")
    return "\n".join(lines) + "\n"
