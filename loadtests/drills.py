"""Operational drills under continuous Locust load: a rollout and a fault.

``python -m loadtests.drills rollout``: publish a new version while v1 serves, load it, ramp its weight
0 -> 10 -> 50 -> 100 % through the router's admin API, unload the old version; report the failed
requests (the target is zero) and P99 per step.

``python -m loadtests.drills fault``: kill tritonserver, wait, restart it; report how fast the router
answered 503 (or fell back), the slowest request during the outage against the router's timeout, how
long until it served again, and the failed requests; then send a corpus of malformed requests during
load and check each gets a 4xx, the good traffic is unaffected and the router's metrics agree.

Both write ``reports/DRILL-TIMESTAMP/`` (drill.json, drill.md and the full load-test report inside).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from export.config import ExportConfig
from export.contract import CONTRACT
from export.publish import publish
from loadtests.config import LoadTestConfig
from loadtests.run import RunResult, run_loadtest
from serving.repository import ModelRepository
from serving.router.process import RouterProcess
from serving.triton import TritonServer, free_port

log = logging.getLogger(__name__)

EXPERIMENT = "drill"


@dataclass
class DrillConfig:
    """Settings shared by the drills."""

    run: Path = Path("runs/demo")
    """The run whose onnx/ folder (fp32 + int8, gated) is published during the drill."""
    out_dir: Path = Path("reports")
    """The drill's folder is OUT_DIR/DRILL-TIMESTAMP/."""
    model_name: str = "sentiment"
    """Triton model name in the drill's own, fresh model repository."""
    rate: float = 20.0
    """Open-loop load: requests per second (Poisson arrivals over 500 user ids)."""
    step_s: float = 12.0
    """Seconds each drill step lasts (>= 10 s: a step's P99 is Locust's 10-second window)."""
    outage_s: float = 6.0
    """Fault drill: seconds tritonserver stays down."""
    timeout_s: float = 2.0
    """The router's per-request timeout to Triton."""


@dataclass
class Step:
    """One phase of a drill, between two wall-clock instants."""

    name: str
    start: float
    end: float = 0.0
    requests: int = 0
    failures: int = 0
    p99_ms: float | None = None
    notes: dict = field(default_factory=dict)


class Background:
    """``run_loadtest`` in a thread, so the drill acts while the load runs."""

    def __init__(self, cfg: LoadTestConfig):
        self.cfg, self.result, self.error = cfg, None, None
        self.thread = threading.Thread(target=self._run, name="locust", daemon=True)

    def _run(self) -> None:
        try:
            self.result = run_loadtest(self.cfg)
        except BaseException as e:  # reported by join()
            self.error = e

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def join(self) -> RunResult:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def __exit__(self, *exc) -> None:
        self.thread.join()


def history(folder: Path) -> list[dict]:
    """Locust's per-second Aggregated rows: timestamp, total requests/failures, current-window P99."""
    rows = []
    with open(folder / "locust_stats_history.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["Name"] == "Aggregated":
                rows.append({"t": float(r["Timestamp"]), "requests": int(r["Total Request Count"]),
                             "failures": int(r["Total Failure Count"]),
                             "p99_ms": None if r["99%"] in ("N/A", "") else float(r["99%"])})
    return rows


def final_ok(folder: Path) -> int:
    """Successful requests in Locust's final totals (``locust_stats.csv``, Aggregated row)."""
    with open(folder / "locust_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return int(row["Request Count"]) - int(row["Failure Count"])


def fill_steps(steps: list[Step], rows: list[dict]) -> None:
    """Requests and failures per step from the running totals; P99 from the last row of each step.

    Locust stamps its per-second rows with whole seconds, so a step's boundaries are good to about a
    second: steps should last several seconds.
    """

    def at(t: float) -> dict:
        # a row is stamped with the whole second it was written in and counts everything up to then:
        # take the last row of an earlier second, so events just after a boundary land in the next step
        before = [r for r in rows if r["t"] <= t - 1.0]
        return before[-1] if before else {"requests": 0, "failures": 0, "p99_ms": None}

    for step in steps:
        first, last = at(step.start), at(step.end)
        step.requests = last["requests"] - first["requests"]
        step.failures = last["failures"] - first["failures"]
        step.p99_ms = last["p99_ms"]


def _load_cfg(cfg: DrillConfig, router: RouterProcess, triton: TritonServer, folder: Path, seconds: float) -> LoadTestConfig:
    return LoadTestConfig(
        host=router.url, target="router", experiment=EXPERIMENT, users=4, arrival_rate=cfg.rate,
        user_population=500, run_time=f"{int(seconds)}s", texts=str(cfg.run / "merged" / "heldout.jsonl"),
        feedback_fraction=0.0, request_timeout=cfg.timeout_s * 3, out_dir=str(folder),
        triton_metrics_url=triton.metrics_url,
    )


def _experiment(folder: Path, arms: list[tuple[str, str, float]], model: str, timeout_s: float, fallback: str | None) -> Path:
    spec = {"name": EXPERIMENT, "timeout_s": timeout_s, "sticky": {"header": "X-User-Id"},
            "arms": [{"name": n, "model": model, "version": v, "weight": w} for n, v, w in arms]}
    if fallback:
        spec["fallback"] = fallback
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _prepare(cfg: DrillConfig, kind: str) -> tuple[Path, ExportConfig]:
    """The drill's folder, and the export settings that publish into its own fresh model repository."""
    onnx_dir = cfg.run / "onnx"
    if not (onnx_dir / CONTRACT.parity_file).is_file():
        raise FileNotFoundError(f"{onnx_dir / CONTRACT.parity_file} does not exist; run `make export` (or "
                                f"`python -m export --adapter {cfg.run / 'adapter'} --no-publish`) first")
    folder = Path(cfg.out_dir) / f"{kind}-drill-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    export_cfg = ExportConfig(adapter=cfg.run / "adapter", runs_dir=cfg.run.parent,
                              repository=folder / "model_repository", model_name=cfg.model_name)
    return folder, export_cfg


def _run_steps(plan: list[tuple[str, Callable[[], dict | None]]], step_s: float) -> list[Step]:
    """Do each step's action, then hold the load steady for ``step_s``; time every step."""
    steps = []
    for name, action in plan:
        step = Step(name, time.time())
        log.info("drill step: %s", name)
        step.notes = action() or {}
        time.sleep(max(0.0, step_s - (time.time() - step.start)))
        step.end = time.time()
        steps.append(step)
    return steps


def rollout_drill(cfg: DrillConfig) -> dict:
    """v1 serves; publish v2, load it, ramp it 0 -> 10 -> 50 -> 100 %, unload v1; all under load."""
    folder, export_cfg = _prepare(cfg, "rollout")
    repository = export_cfg.repository
    old = publish(cfg.run / "onnx", "fp32", export_cfg).name
    experiment = _experiment(folder, [("stable", old, 100), ("canary", str(int(old) + 1), 0)], cfg.model_name,
                             cfg.timeout_s, fallback=None)
    token = secrets.token_urlsafe(16)
    (folder / "admin-token").write_text(token)
    n_steps = 6
    with TritonServer(repository, models=[cfg.model_name], log_file=folder / "tritonserver.log") as triton, \
            RouterProcess(experiment, triton_url=triton.http_url, admin_token_file=folder / "admin-token",
                          log_file=folder / "router.log") as router, \
            ModelRepository(triton.http_address, repository) as models, \
            httpx.Client(base_url=router.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as admin:

        def weights(stable: float, canary: float) -> Callable[[], dict]:
            def act() -> dict:
                r = admin.put(f"/v2/experiments/{EXPERIMENT}/weights", json={"weights": {"stable": stable, "canary": canary}})
                r.raise_for_status()
                return {"weights": {"stable": stable, "canary": canary}}
            return act

        def publish_and_load() -> dict:
            new = publish(cfg.run / "onnx", "int8", export_cfg).name
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
        load = _load_cfg(cfg, router, triton, folder, cfg.step_s * n_steps + 4)
        with Background(load) as background:
            time.sleep(2.0)  # let the arrivals start
            steps = _run_steps(plan, cfg.step_s)
            result = background.join()
    fill_steps(steps, history(result.folder))
    summary = {"drill": "rollout", "folder": str(folder), "loadtest_report": str(result.report),
               "rate": cfg.rate, "failed_requests": sum(s.failures for s in steps),
               "requests": sum(s.requests for s in steps), "steps": [asdict(s) for s in steps]}
    _write(folder, summary, rollout_markdown(summary))
    return summary


def rollout_markdown(s: dict) -> str:
    lines = [f"# Rollout drill\n\n{s['requests']} requests at {s['rate']:.0f}/s, **{s['failed_requests']} failed** "
             "(target: 0).\n", "| step | requests | failed | P99 ms (last 10 s) | notes |", "|---|---|---|---|---|"]
    for st in s["steps"]:
        p99 = f"{st['p99_ms']:.0f}" if st["p99_ms"] is not None else "n/a"
        lines.append(f"| {st['name']} | {st['requests']} | {st['failures']} | {p99} | {json.dumps(st['notes']) if st['notes'] else ''} |")
    lines.append(f"\nLoad-test report: {s['loadtest_report']}")
    return "\n".join(lines) + "\n"


def _write(folder: Path, summary: dict, markdown: str) -> None:
    (folder / "drill.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "drill.md").write_text(markdown)


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
        body = {"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [1, 1], "data": [self.text]}]}
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


MALFORMED: dict[str, tuple[str, bytes, dict]] = {
    "bad JSON": (EXPERIMENT, b'{"inputs": [', {}),
    "wrong datatype": (EXPERIMENT, json.dumps({"inputs": [{"name": CONTRACT.input_text, "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}).encode(), {}),
    "missing input": (EXPERIMENT, json.dumps({"inputs": []}).encode(), {}),
    "shape mismatch": (EXPERIMENT, json.dumps({"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [3, 1], "data": ["a"]}]}).encode(), {}),
    "oversize body": (EXPERIMENT, b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["' + b"x" * (2 << 20) + b'"]}]}', {}),
    "invalid UTF-8": (EXPERIMENT, b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["\xff\xfe"]}]}', {}),
    "unknown model": ("no-such-experiment", json.dumps({"inputs": [{"name": CONTRACT.input_text, "datatype": "BYTES", "shape": [1, 1], "data": ["ok"]}]}).encode(), {}),
}
"""Name -> (route model name, body, headers): the corpus the fault drill sends during load."""


def router_counts(url: str) -> dict[str, float]:
    """Totals from the router's /metrics: answered requests and errors by code, over all arms."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {"answered": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "router_requests_total" and sample.labels.get("experiment") == EXPERIMENT:
                out["answered"] += sample.value
            elif sample.name == "router_errors_total":
                key = f"errors_{sample.labels.get('code')}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def fault_drill(cfg: DrillConfig) -> dict:
    """Kill tritonserver under load, restart it, then send malformed requests under load."""
    folder, export_cfg = _prepare(cfg, "fault")
    repository = export_cfg.repository
    version = publish(cfg.run / "onnx", "fp32", export_cfg).name
    experiment = _experiment(folder, [("control", version, 50), ("treatment", version, 50)], cfg.model_name,
                             cfg.timeout_s, fallback="control")
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    text = "a fine, warm and funny film"
    timeline: dict[str, float] = {}
    malformed: dict[str, list[int]] = {}
    with TritonServer(repository, models=[cfg.model_name], log_file=folder / "tritonserver.log", **ports) as triton, \
            RouterProcess(experiment, triton_url=triton.http_url, log_file=folder / "router.log") as router:

        def kill() -> dict:
            timeline["kill"] = time.time()
            os.killpg(triton.process.pid, signal.SIGKILL)
            triton.process.wait()
            time.sleep(cfg.outage_s)
            timeline["restart"] = time.time()
            triton.start()
            timeline["ready"] = time.time()
            return {"outage_s": cfg.outage_s, "restart_to_ready_s": round(timeline["ready"] - timeline["restart"], 2)}

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
        load = _load_cfg(cfg, router, triton, folder, cfg.step_s * len(plan) + cfg.outage_s + 25)
        with Background(load) as background, ProbeLoop(router.url, text, 0.05, cfg.timeout_s * 5) as probe:
            time.sleep(2.0)
            steps = _run_steps(plan, cfg.step_s)
            result = background.join()
        counts_after = router_counts(router.url)
    fill_steps(steps, history(result.folder))
    records = probe.records
    after_kill = [p for p in records if p.sent >= timeline["kill"]]
    first_error = next((p for p in after_kill if p.status in (503, 504)), None)
    recovered = next((p for p in records if p.sent >= timeline["restart"] and p.status == 200), None)
    outage = [p for p in records if timeline["kill"] <= p.sent < (recovered.sent if recovered else time.time())]
    summary = {
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
    _write(folder, summary, fault_markdown(summary))
    return summary


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


def main(argv: list[str] | None = None) -> int:
    import argparse

    from training.cli import build_parser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    parser = argparse.ArgumentParser(prog="python -m loadtests.drills", description=__doc__.split("\n\n")[0])
    parser.add_argument("drill", choices=["rollout", "fault"], help="which drill to run")
    known, rest = parser.parse_known_args(argv)
    options = vars(build_parser(DrillConfig, "python -m loadtests.drills DRILL", "drill settings").parse_args(rest))
    options.pop("config", None)
    cfg = DrillConfig(**options)
    summary = (rollout_drill if known.drill == "rollout" else fault_drill)(cfg)
    print((Path(summary["folder"]) / "drill.md").read_text())
    if known.drill == "rollout":
        return 0 if summary["failed_requests"] == 0 else 1
    ok = summary["malformed_all_4xx"] and summary["no_request_hung"] and summary["metrics"]["errors_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
