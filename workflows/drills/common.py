"""What both drills share: settings, timed steps, Locust in the background, its per-second totals."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from export.config import ExportConfig
from export.contract import CONTRACT
from loadtests.config import LoadTestConfig
from loadtests.loadtest_report import number, read_csv, read_stats
from loadtests.run import PREFIX, RunResult, run_loadtest
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from tunestack import names
from tunestack.layout import RunLayout
from tunestack.procs import wait_for

log = logging.getLogger(__name__)

EXPERIMENT = "drill"


@dataclass
class DrillConfig:
    """Settings shared by the drills."""

    run: Path = Path("runs/demo")
    """The run whose onnx/ folder (fp32 + int8, gated) is published during the drill."""
    out_dir: Path = Path("reports")
    """The drill's folder is OUT_DIR/DRILL-TIMESTAMP/."""
    model_name: str = CONTRACT.default_model_name
    """Triton model name in the drill's own, fresh model repository."""
    rate: float = 20.0
    """Open-loop load: requests per second (Poisson arrivals over 500 user ids)."""
    step_s: float = 12.0
    """Seconds each drill step lasts (>= 10 s: a step's P99 is Locust's 10-second window)."""
    outage_s: float = 6.0
    """Fault drill: seconds tritonserver stays down."""
    timeout_s: float = names.ROUTER_TIMEOUT_S
    """The router's per-request timeout to Triton."""
    bad_run: Path = Path("runs/demo-few-steps")
    """Rollout drill bad: the run whose fp32 export (an adapter trained for a few steps) is the candidate."""
    rollout_load_s: float = 300.0
    """Rollout drills good/bad/slow: seconds of load (the controller must decide within them, or it holds)."""
    aa_users: int = 300
    """A/A drill: distinct user ids (sticky keys) the arrivals come from."""
    aa_activity: float = 0.7
    """A/A drill: the users' Zipf activity exponent (the k-th id's weight k^-s: a few heavy users)."""
    aa_text_window: float = 0.05
    """A/A drill: the share of the held-out texts in each user's own window (sorted by label, then length)."""
    aa_load_s: float = 240.0
    """A/A drill: seconds of load; the rollout must complete within them (a step undecided for half of it holds)."""
    look_s: float = 3.0
    """A/A drill: seconds between two reads of the router's report."""
    after_decision_s: float | None = None
    """Rollout and A/A drills: seconds the load goes on once the rollout controller has decided (traffic on the
    decided weights), then it stops; None: it runs its whole ``rollout_load_s`` / ``aa_load_s``."""
    loop_clean_s: float = 30.0
    """Loop drills: seconds of traffic before the shift (training reviews in their own wording; 0: shifted from
    the start); the loop watches it too."""
    loop_load_s: float = 1500.0
    """Loop drills: seconds of shifted load at most; the load stops as soon as the retrain cycle ends."""
    loop_labels: int = 2100
    """Loop drills: the new-labels trigger (labelled kept inputs that start a cycle; the ~600 before the shift
    count too)."""
    loop_method: str = "lora"
    """Loop drills: the candidate's fine-tuning method (training's ``--method``), from the production model."""
    loop_max_steps: int = 300
    """Loop drills: the candidate's training steps."""
    loop_learning_rate: float | None = None
    """Loop drills: the candidate's learning rate (None: the method's default)."""
    loop_batch_size: int = 16
    """Loop drills: the candidate's batch size."""

    @property
    def layout(self) -> RunLayout:
        """``run``'s folders and files."""
        return RunLayout(self.run)


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
    """``run_loadtest`` in a thread, so the drill acts while the load runs (until ``stop_event``, if given, is set)."""

    def __init__(self, cfg: LoadTestConfig, stop_event: threading.Event | None = None):
        self.cfg, self.result, self.error, self.stop_event = cfg, None, None, stop_event
        self.thread = threading.Thread(target=self._run, name="locust", daemon=True)

    def _run(self) -> None:
        try:
            self.result = run_loadtest(self.cfg, self.stop_event)
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

    def join_after(self, seconds: float | None) -> RunResult:
        """``join`` once the load has run ``seconds`` more (then it is stopped; it needs a ``stop_event``), or,
        with None, at the load's own end."""
        if seconds is not None:
            assert self.stop_event is not None, "stopping the load early needs a stop_event"
            self.thread.join(seconds)
            self.stop_event.set()
        return self.join()


def router_counts(url: str) -> dict[str, float]:
    """Totals from the router's /metrics: answered requests, errors by code, and the texts the drift monitor
    has taken in (``drift_monitored``) or dropped (``drift_dropped``), over all arms."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {"answered": 0.0, "drift_monitored": 0.0, "drift_dropped": 0.0}
    totals = {"router_requests_total": "answered", "router_drift_samples_total": "drift_monitored",
              "router_drift_dropped_samples_total": "drift_dropped"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("experiment") == EXPERIMENT:
                out[totals[sample.name]] += sample.value
            elif sample.name == "router_errors_total":
                key = f"errors_{sample.labels.get('code')}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def wait_for_load(router_url: str, others: Callable[[], int] = lambda: 0, timeout: float = 120.0) -> None:
    """Block until the router has answered more requests than ``others()`` sent (a probe's, say), plus one:
    the load test's arrivals have begun."""
    wait_for(lambda: router_counts(router_url)["answered"] > others() + 1, timeout, "the load test's first answers",
             interval=0.2)


def history(folder: Path) -> list[dict]:
    """Locust's per-second Aggregated rows: timestamp, total requests/failures, current-window P99."""
    return [{"t": float(r["Timestamp"]), "requests": int(r["Total Request Count"]),
             "failures": int(r["Total Failure Count"]), "p99_ms": number(r["99%"])}
            for r in read_csv(folder / f"{PREFIX}_stats_history.csv") if r["Name"] == "Aggregated"]


def final_ok(folder: Path) -> int:
    """Successful requests in Locust's final totals (``locust_stats.csv``, Aggregated row)."""
    row = next(r for r in read_stats(folder / PREFIX) if r.name == "Aggregated")
    return row.requests - row.failures


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


def load_config(cfg: DrillConfig, router: RouterProcess, triton: TritonServer, folder: Path, seconds: float) -> LoadTestConfig:
    return LoadTestConfig(
        host=router.url, target="router", experiment=EXPERIMENT, users=4, arrival_rate=cfg.rate,
        user_population=500, run_time=f"{int(seconds)}s", texts=str(cfg.layout.heldout),
        feedback_fraction=0.0, request_timeout=cfg.timeout_s * 3, out_dir=str(folder),
        triton_metrics_url=triton.metrics_url,
    )


def prepare(cfg: DrillConfig, kind: str) -> tuple[Path, ExportConfig]:
    """The drill's folder, and the export settings that publish into its own fresh model repository."""
    onnx_dir = cfg.layout.onnx
    if not (onnx_dir / CONTRACT.parity_file).is_file():
        raise FileNotFoundError(f"{onnx_dir / CONTRACT.parity_file} does not exist; run `make export` (or "
                                f"`python -m export --adapter {cfg.layout.adapter} --no-publish`) first")
    folder = Path(cfg.out_dir) / f"{kind}-drill-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    export_cfg = ExportConfig(adapter=cfg.layout.adapter, runs_dir=cfg.run.parent,
                              repository=folder / "model_repository", model_name=cfg.model_name)
    return folder, export_cfg


def run_steps(plan: list[tuple[str, Callable[[], dict | None]]], step_s: float) -> list[Step]:
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


def write_report(folder: Path, summary: dict, markdown: str) -> None:
    (folder / "drill.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "drill.md").write_text(markdown)
