"""The fault drill: kill tritonserver under load and restart it; then malformed requests under load."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from experiments.spec import write_experiment
from export.contract import CONTRACT
from export.publish import publish
from loadtests.run import RunResult
from serving.page.snapshot import watch_page
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack.procs import free_port
from workflows.drills.common import (
    EXPERIMENT,
    Background,
    DrillConfig,
    Step,
    fill_steps,
    final_ok,
    history,
    load_config,
    prepare,
    router_counts,
    run_steps,
    wait_for_load,
    write_report,
)


@dataclass
class Probe:
    """One request of the probe loop: when it was sent, what came back, how long it took."""

    sent: float
    status: int
    seconds: float


class ProbeLoop:
    """Sends one inference request every ``interval`` seconds through the router, recording each."""

    def __init__(self, url: str, text: str, interval: float, timeout: float):
        self.url, self.text, self.interval, self.timeout = url, text, interval, timeout
        self.records: list[Probe] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="probe", daemon=True)

    def _loop(self) -> None:
        body = _infer_body(self.text)
        with httpx.Client(timeout=self.timeout) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                sent = time.time()
                try:
                    status = client.post(f"{self.url}/v2/models/{EXPERIMENT}/infer", json=body,
                                         headers={"X-User-Id": f"probe-{n % 50}"}).status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all: a hang past the client timeout, or a refused connection
                self.records.append(Probe(sent, status, time.time() - sent))
                self._stop.wait(max(0.0, self.interval - (time.time() - sent)))

    def __enter__(self) -> ProbeLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def _one_text(raw: bytes) -> bytes:
    """A KServe v2 body with one BYTES text of ``raw`` bytes, written by hand (JSON cannot carry invalid UTF-8)."""
    return b'{"inputs": [{"name": "' + CONTRACT.input_text.encode() + b'", "datatype": "BYTES", "shape": [1, 1], "data": ["' + raw + b'"]}]}'


MALFORMED: dict[str, tuple[str, bytes, dict]] = {
    "bad JSON": (EXPERIMENT, b'{"inputs": [', {}),
    "wrong datatype": (EXPERIMENT, json.dumps({"inputs": [{"name": CONTRACT.input_text, "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}).encode(), {}),
    "missing input": (EXPERIMENT, json.dumps({"inputs": []}).encode(), {}),
    "shape mismatch": (EXPERIMENT, json.dumps({"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [3, 1], "data": ["a"]}]}).encode(), {}),
    "oversize body": (EXPERIMENT, _one_text(b"x" * (2 << 20)), {}),
    "invalid UTF-8": (EXPERIMENT, _one_text(b"\xff\xfe"), {}),
    "unknown model": ("no-such-experiment", json.dumps({"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [1, 1], "data": ["ok"]}]}).encode(), {}),
}
"""Name -> (route model name, body, headers): the corpus the fault drill sends during load."""


def _infer_body(text: str) -> dict:
    return {"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [1, 1], "data": [text]}]}


def _router_serves(url: str, text: str) -> bool:
    try:
        return httpx.post(f"{url}/v2/models/{EXPERIMENT}/infer", json=_infer_body(text), timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def fault_drill(cfg: DrillConfig) -> dict:
    """Kill tritonserver under load, restart it, then send malformed requests under load."""
    folder, export_cfg = prepare(cfg, "fault")
    repository = export_cfg.repository
    version = publish(cfg.layout.onnx, "fp32", export_cfg).name
    experiment = write_experiment(folder / "experiment.yaml", EXPERIMENT, [("control", version, 50), ("treatment", version, 50)],
                                  cfg.model_name, cfg.timeout_s, fallback="control")
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    text = "a fine, warm and funny film"
    timeline: dict[str, float] = {}
    malformed: dict[str, list[int]] = {}
    with TritonServer(repository, models=[cfg.model_name], log_file=folder / "tritonserver.log", **ports) as triton, \
            RouterProcess(experiment, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url,
                          log_file=folder / "router.log") as router, \
            watch_page(router.url, EXPERIMENT, folder):

        def kill() -> dict:
            timeline["kill"] = time.time()
            triton.kill()
            time.sleep(cfg.outage_s)
            timeline["restart"] = time.time()
            triton.start()
            timeline["ready"] = time.time()
            # the step lasts until the router answers again (it retries a downed upstream after a short
            # back-off), plus a second, so the failures of the outage all belong to this step
            deadline = time.time() + 30
            while time.time() < deadline and not _router_serves(router.url, text):
                time.sleep(0.05)
            timeline["router_serving"] = time.time()
            time.sleep(1.0)
            return {"outage_s": cfg.outage_s, "restart_to_ready_s": round(timeline["ready"] - timeline["restart"], 2),
                    "restart_to_router_serving_s": round(timeline["router_serving"] - timeline["restart"], 2)}

        def send_malformed() -> dict:
            timeline["malformed_before"] = time.time()
            counts_before = router_counts(router.url)
            with httpx.Client(base_url=router.url, timeout=10) as client:
                for name, (model, body, headers) in MALFORMED.items():
                    malformed[name] = [client.post(f"/v2/models/{model}/infer", content=body,
                                                   headers={"Content-Type": "application/json", **headers}).status_code
                                       for _ in range(5)]
            return {"router_counts_before": counts_before}

        plan = [("steady", lambda: None), ("tritonserver killed, then restarted", kill),
                ("recovered", lambda: None), ("malformed corpus", send_malformed)]
        load = load_config(cfg, router, triton, folder, cfg.step_s * len(plan) + cfg.outage_s + 25)
        with Background(load) as background, ProbeLoop(router.url, text, 0.05, cfg.timeout_s * 5) as probe:
            wait_for_load(router.url, others=lambda: len(probe.records))
            steps = run_steps(plan, cfg.step_s)
            result = background.join()
        counts_after = router_counts(router.url)
    fill_steps(steps, history(result.folder))
    summary = fault_summary(cfg, folder, result, steps, probe.records, timeline, malformed, counts_after)
    write_report(folder, summary, fault_markdown(summary))
    return summary


def fault_summary(cfg: DrillConfig, folder: Path, result: RunResult, steps: list[Step], records: list[Probe],
                  timeline: dict[str, float], malformed: dict[str, list[int]], counts_after: dict) -> dict:
    """The drill's findings from the probe's records, the step totals and the router's counters."""
    after_kill = [p for p in records if p.sent >= timeline["kill"]]
    first_error = next((p for p in after_kill if p.status in (503, 504)), None)
    recovered = next((p for p in records if p.sent >= timeline["restart"] and p.status == 200), None)
    outage = [p for p in records if timeline["kill"] <= p.sent < (recovered.sent if recovered else time.time())]
    return {
        "drill": "fault", "folder": str(folder), "loadtest_report": str(result.report), "rate": cfg.rate,
        "router_timeout_s": cfg.timeout_s, "outage_s": cfg.outage_s,
        "first_503_after_kill_s": round(first_error.sent + first_error.seconds - timeline["kill"], 3) if first_error else None,
        "outage_statuses": dict(sorted(Counter(p.status for p in outage).items())),
        "slowest_outage_request_s": round(max((p.seconds for p in outage), default=0.0), 3),
        "no_request_hung": all(p.status != 0 and p.seconds <= cfg.timeout_s + 1.0 for p in outage),
        "serving_again_after_restart_s": round(recovered.sent - timeline["restart"], 3) if recovered else None,
        "serving_again_after_kill_s": round(recovered.sent - timeline["kill"], 3) if recovered else None,
        "failed_requests": sum(s.failures for s in steps),
        "failed_requests_by_step": {s.name: s.failures for s in steps},
        "malformed": {name: {"statuses": codes, "all_4xx": all(400 <= c < 500 for c in codes)} for name, codes in malformed.items()},
        "malformed_all_4xx": all(400 <= c < 500 for codes in malformed.values() for c in codes),
        "good_traffic_failures_during_malformed": steps[-1].failures,
        "router_counts_after": counts_after,
        "metrics": metrics_consistency(steps[-1].notes["router_counts_before"], counts_after, malformed,
                                       final_ok(result.folder), records),
        "steps": [asdict(s) for s in steps],
    }


def metrics_consistency(before: dict, after: dict, malformed: dict[str, list[int]], locust_ok: int,
                        probes: list[Probe]) -> dict:
    """Do the router's own counters agree with what the clients saw?

    - every answer the router counted is one the clients received: answered == Locust's successful
      requests + the probe's 200s (Locust sends no feedback in a drill, so its totals are all inferences);
    - the errors by code the router counted while the malformed corpus was sent are exactly that corpus.
    """
    client_ok = locust_ok + sum(p.status == 200 for p in probes)
    sent = Counter(code for codes in malformed.values() for code in codes)
    counted = {code: after.get(f"errors_{code}", 0) - before.get(f"errors_{code}", 0) for code in sent}
    return {
        "router_answered": after.get("answered", 0), "clients_received_ok": client_ok,
        "answered_match": after.get("answered", 0) == client_ok,
        "answered_minus_received": after.get("answered", 0) - client_ok,
        "malformed_sent_by_code": dict(sent), "router_errors_by_code_during_malformed": counted,
        "errors_match": counted == dict(sent),
    }


def fault_markdown(s: dict) -> str:
    lines = [
        "# Fault drill\n",
        f"tritonserver killed (SIGKILL) under {s['rate']:.0f} requests/s, down {s['outage_s']:.0f} s, restarted.\n",
        f"- first 503 after the kill: {s['first_503_after_kill_s']} s",
        f"- slowest request during the outage: {s['slowest_outage_request_s']} s (router timeout {s['router_timeout_s']} s); "
        f"no request hung: {s['no_request_hung']}",
        f"- statuses seen by the probe during the outage: {s['outage_statuses']}",
        f"- serving again {s['serving_again_after_restart_s']} s after the restart began "
        f"({s['serving_again_after_kill_s']} s after the kill)",
        f"- failed load-test requests: {s['failed_requests']} ({s['failed_requests_by_step']})",
        "",
        "## Malformed requests during load\n",
        "| request | statuses | all 4xx |",
        "|---|---|---|",
    ]
    for name, m in s["malformed"].items():
        lines.append(f"| {name} | {m['statuses']} | {m['all_4xx']} |")
    lines.append(f"\nGood traffic failures while they were sent: {s['good_traffic_failures_during_malformed']}.")
    m = s["metrics"]
    lines.append(f"\nRouter metrics: {m['router_answered']:.0f} answers counted, {m['clients_received_ok']} received by "
                 f"the clients (match: {m['answered_match']}); errors counted during the corpus "
                 f"{m['router_errors_by_code_during_malformed']} for {m['malformed_sent_by_code']} sent "
                 f"(match: {m['errors_match']}).")
    lines.append(f"\nLoad-test report: {s['loadtest_report']}")
    return "\n".join(lines) + "\n"
