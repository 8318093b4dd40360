"""``make bench``: Triton and the servers a user would run instead, side by side in one run, same machine,
same int8 ONNX model, same real reviews, same Locust load.

Options (``--options``):

- ``triton``: Triton serving the published model (``--repository``/``--model``, the newest version: the
  tuned one after ``make tune``); without a published model, the run's int8 published as ``make export``
  would, into a temporary repository;
- ``router``: the A/B router in front of that Triton, every request to that version;
- ``fastapi-ort`` / ``litserve``: the peers of ``loadtests.peers`` on the same version folder;
- ``baseline``: ``loadtests.baseline``, a transformers ``pipeline`` on the merged torch model;
- ``triton-published``: when the served version came from ``make tune``, the version it was tuned from with
  the settings it was published with (reloaded last, as a config override), for the before/after;

and the in-process limit (``loadtests.peers.inprocess``: tokenizers + ORT, no server).

For each served option: P50/P99 at a fixed Poisson rate (open loop) and the server's CPU there (psutil over
its process tree, % of one core), then closed-loop levels (users doubling) for the maximum throughput whose
P99 stays under the bound. Every server runs for the whole bench and the options are interleaved (the fixed
rate for each option in turn, then each user count for each option in turn), so background noise spreads
over all of them instead of landing on whichever ran during it; the peers not under load are paused
(SIGSTOP), so an idle server that polls takes nothing from the one measured (the phases of
``tunestack.bench.run_phases``: phase 0 the fixed rate, phase k the k-th user count). Percentiles are exact,
from every request's own time (``loadtests.measure``), not Locust's buckets. Writes
``reports/bench-servers-TIMESTAMP/`` (``tunestack.bench``: bench.json with ``ratios`` and ``targets``,
bench.md, the fixed-rate latency CDF per option). Figures, not pass/fail: the load generator shares the
machine with the servers.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from export.contract import CONTRACT
from loadtests.bench_report import ratios_and_targets, render
from loadtests.config import LoadTestConfig, LoadTestError
from loadtests.measure import ProcessTreeCPU, read_latencies, window_stats
from loadtests.run import PREFIX, run_loadtest
from tunestack.bench import BenchOutput, BenchReport, BenchRun, run_phases
from tunestack.layout import RunLayout
from tunestack.problems import raise_problems

log = logging.getLogger(__name__)

SERVED = ("triton", "router", "fastapi-ort", "litserve", "baseline", "triton-published")
WARMUP_S = 1.0
"""The first second (at most a fifth) of each Locust run is left out of its figures (connections opening, users
spawning)."""


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class BenchConfig(BenchOutput):
    """What ``make bench`` measures and how long each measurement runs."""

    run: str = _f("runs/demo", "run folder: merged/ (torch model for the baseline, heldout.jsonl) and onnx/")
    repository: str = _f("model_repository", "Triton serves MODEL's newest version from here (else the run's int8, "
                                              "published as make export would, into a temporary repository)")
    model: str = _f(CONTRACT.default_model_name, "Triton model name")
    version: int = _f(0, "version to serve and compare (0: the newest dynamic-int8 version, else the newest)")
    options: str = _f(",".join(SERVED), f"served options to measure, comma-separated: {', '.join(SERVED)}")
    in_process: bool = _f(True, "also measure the in-process limit (tokenizers + ORT, no server)")
    in_process_s: float = _f(10.0, "in process: seconds per row")
    threads: int = _f(2, "intra-op threads of the peers, the in-process limit and the baseline")
    litserve_max_batch_size: int = _f(16, "LitServe max_batch_size")
    litserve_batch_timeout: float = _f(0.002, "LitServe batch_timeout (seconds)")
    rate: float = _f(20.0, "served: the fixed, moderate arrival rate (requests/s, Poisson) for P50/P99 and CPU")
    rate_time: str = _f("15s", "served: how long the fixed-rate run lasts")
    users: str = _f("1,2,4,8,16", "served: closed-loop user counts tried in order for the maximum throughput")
    level_time: str = _f("10s", "served: how long each user count runs")
    p99_bound_ms: float = _f(100.0, "served: the maximum throughput counts only levels with P99 <= this bound")

    def __post_init__(self) -> None:
        problems = []
        unknown = [o for o in self.option_list if o not in SERVED]
        if unknown:
            problems.append(f"unknown option(s) {unknown}; expected some of: {', '.join(SERVED)}")
        if self.rate <= 0 or self.p99_bound_ms <= 0 or self.threads < 1 or self.in_process_s <= 0:
            problems.append("rate, p99_bound_ms, threads and in_process_s must be > 0")
        if not all(u.strip().isdigit() and int(u) > 0 for u in self.users.split(",")):
            problems.append(f"users must be comma-separated positive integers, got {self.users!r}")
        raise_problems(problems, LoadTestError, "bench config")

    @property
    def option_list(self) -> list[str]:
        return [o.strip() for o in self.options.split(",") if o.strip()]


def exact(folder: Path) -> tuple[dict, tuple[float, float], np.ndarray]:
    """Exact figures of one Locust run (its first WARMUP_S left out), the window they cover (epoch s) and the
    successful requests' milliseconds in it."""
    rows = read_latencies(folder / PREFIX)
    if not rows:
        raise LoadTestError(f"no request was recorded in {folder} (see its locust.log)")
    first, end = min(r.end_s - r.ms / 1000 for r in rows), rows[-1].end_s
    start = first + min(WARMUP_S, 0.2 * (end - first))
    return window_stats(rows, start, None), (start, end), np.array([r.ms for r in rows if r.ok and r.end_s >= start])


def fixed_rate(base: LoadTestConfig, cfg: BenchConfig, out: Path, server_pids: list[int]) -> tuple[dict, np.ndarray]:
    """One option at the fixed arrival rate: exact P50/P99 and the server's CPU over the measured window; and
    the milliseconds of its requests there."""
    with ProcessTreeCPU(*server_pids) as cpu:
        fixed = run_loadtest(LoadTestConfig(**{**asdict(base), "arrival_rate": cfg.rate, "users": 1,
                                               "run_time": cfg.rate_time, "out_dir": str(out / "fixed-rate")}))
    stats, window, samples = exact(fixed.folder)
    summary = json.loads((fixed.folder / "summary.json").read_text())
    return {"rate": cfg.rate, **stats, "server_cpu_percent": cpu.percent(*window),
            "client_saturated": summary["client_saturated"], "machine_busy": summary["machine_busy"],
            "locust_cpu_percent": locust_cpu(summary), "report": str(fixed.report), "window": list(window)}, samples


def closed_level(base: LoadTestConfig, cfg: BenchConfig, out: Path, users: int) -> dict:
    """One option at one closed-loop user count: exact throughput, P50/P99, errors."""
    level = run_loadtest(LoadTestConfig(**{**asdict(base), "users": users, "run_time": cfg.level_time,
                                           "out_dir": str(out / f"users-{users}")}))
    s = json.loads((level.folder / "summary.json").read_text())
    stats, window, _ = exact(level.folder)
    return {"users": users, **stats, "client_saturated": s["client_saturated"], "machine_busy": s["machine_busy"],
            "locust_cpu_percent": locust_cpu(s), "report": str(level.report), "window": list(window)}


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP these processes and their children for the duration, SIGCONT after (also on errors)."""
    processes = []
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
    stopped = []
    try:
        for p in processes:
            with suppress(psutil.NoSuchProcess):
                p.suspend()
                stopped.append(p)
        yield
    finally:
        for p in stopped:
            with suppress(psutil.NoSuchProcess):
                p.resume()


def measure(targets: dict[str, tuple[LoadTestConfig, list[int]]], cfg: BenchConfig, out: Path,
            pausable: dict[str, list[int]] | None = None) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Every option, interleaved so that a slow minute of the machine lands on all of them alike: the fixed
    rate for each option in turn (phase 0), then each closed-loop user count for each option in turn. An option
    stops climbing once its P99 passes twice the bound or errors appear; the others go on. ``pausable``: each
    option's own processes (the peers), stopped while another option is measured: an idle server that polls
    (LitServe idles at ~17 % of a core here) would otherwise take CPU from the one under load. (Results by
    option, the fixed-rate milliseconds by option.)"""
    pausable = pausable or {}
    users = [int(u) for u in cfg.users.split(",")]
    samples: dict[str, np.ndarray] = {}

    def phase_of(option: str):
        base, pids = targets[option]

        def step(phase: int) -> dict:
            with paused([pid for other, ps in pausable.items() if other != option for pid in ps]):
                if phase == 0:
                    log.info("served option %s: %g req/s", option, cfg.rate)
                    result, samples[option] = fixed_rate(base, cfg, out / option, pids)
                    return result
                log.info("served option %s: %d users", option, users[phase - 1])
                return closed_level(base, cfg, out / option, users[phase - 1])
        return step

    def climbing(option: str, level: dict) -> bool:
        return "users" not in level or (level["error_rate"] <= 0.01 and (level["p99_ms"] or 0) <= 2 * cfg.p99_bound_ms)

    phases = run_phases({option: phase_of(option) for option in targets}, 1 + len(users), keep=climbing)
    results = {option: {"fixed_rate": steps[0], "levels": steps[1:],
                        "max_throughput": max_throughput(steps[1:], cfg.p99_bound_ms)}
               for option, steps in phases.items()}
    return results, samples


def locust_cpu(summary: dict) -> float | None:
    """Mean CPU of the Locust process(es) during a run, % of one core: what the load generator took from the server."""
    cpu = summary.get("client_cpu") or {}
    means = [v["mean"] for role, v in cpu.items() if role != "machine" and v.get("mean") is not None]
    return sum(means) if means else None


def max_throughput(levels: list[dict], bound_ms: float, max_error_rate: float = 0.01) -> dict:
    """The level with the highest throughput among those with P99 <= ``bound_ms`` and few errors."""
    ok = [lv for lv in levels if lv["error_rate"] <= max_error_rate and lv["p99_ms"] is not None
          and lv["p99_ms"] <= bound_ms]
    best = max(ok, key=lambda lv: lv["throughput_rps"], default=None)
    return {"bound_ms": bound_ms, "throughput_rps": best["throughput_rps"] if best else None,
            "users": best["users"] if best else None, "p99_ms": best["p99_ms"] if best else None}


def served_version(cfg: BenchConfig, tmp: Path) -> tuple[Path, int]:
    """(repository, version) Triton serves: the published model, or the run's int8 published into ``tmp``."""
    from export.config import ExportConfig
    from export.publish import default_version, existing_versions, publish

    repository = Path(cfg.repository)
    versions = existing_versions(repository / cfg.model)
    if versions:
        version = cfg.version or default_version(repository / cfg.model)
        if version not in versions:
            raise LoadTestError(f"{repository / cfg.model} has no version {version} (versions: {versions})")
        return repository, version
    log.info("%s has no published %s: publishing the run's int8 into a temporary repository", repository, cfg.model)
    version_dir = publish(RunLayout(cfg.run).onnx, "int8", ExportConfig(repository=tmp / "repository",
                                                                         model_name=cfg.model))
    return tmp / "repository", int(version_dir.name)


def triton_settings(model_dir: Path) -> str:
    from export import triton_config
    from serving.tune.trial import candidate_of

    return candidate_of(triton_config.parse_pbtxt((model_dir / "config.pbtxt").read_text())).label()


def published_settings(model_dir: Path, version: int):
    """(the version ``version`` was tuned from, its published settings as a Candidate), or None if not tuned."""
    from serving.tune.search import OFF, Candidate

    tuned = json.loads((model_dir / str(version) / "provenance.json").read_text())
    source = tuned.get("export_config", {}).get("extra", {}).get("tuned_from_version")
    if not source or not (model_dir / str(source) / "provenance.json").is_file():
        return None
    c = json.loads((model_dir / str(source) / "provenance.json").read_text())["export_config"]
    delay = c["max_queue_delay_us"] if c.get("dynamic_batching", True) else OFF
    return int(source), Candidate(c["instance_count"], c["intra_op_threads"], delay,
                                  tuple(c.get("preferred_batch_sizes") or ()), c["max_batch_size"],
                                  bool(c.get("intra_op_spinning", False)))


def measure_published(triton, cfg: BenchConfig, model_dir: Path, version: int, common: dict, out: Path,
                      served: dict) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Reload the model with the settings the tuned version's source was published with; measure that version
    (``measure``'s results, empty when ``version`` was not made by ``make tune``)."""
    from export import triton_config
    from serving.tune.trial import load_config, trial_config

    found = published_settings(model_dir, version)
    if found is None:
        served["published"] = f"version {version} was not made by make tune: nothing to compare it with"
        log.warning("triton-published: %s", served["published"])
        return {}, {}
    source, settings = found
    served["published"] = {"version": source, "settings": settings.label()}
    base = triton_config.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    load_config(triton, trial_config(base, source, settings), source)
    target = {"target": "triton", "host": triton.http_url, "model": cfg.model, "versions": str(source),
              "triton_metrics_url": triton.metrics_url}
    return measure({"triton-published": (LoadTestConfig(**{**common, **target}), [triton.pid])}, cfg, out)


def run_served(cfg: BenchConfig, out: Path) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Start every server, measure the options interleaved; (results by option, what Triton served, the
    fixed-rate milliseconds by option)."""
    from loadtests.peers import peer_service
    from loadtests.services import Service
    from serving.router.config import write_experiment
    from serving.router.process import RouterProcess
    from serving.triton import TritonServer

    run = RunLayout(cfg.run)
    results: dict = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        repository, version = served_version(cfg, tmp)
        version_dir = repository / cfg.model / str(version)
        served = {"repository": str(repository), "model": cfg.model, "version": version,
                  "settings": triton_settings(repository / cfg.model),
                  "variant": json.loads((version_dir / "provenance.json").read_text()).get("variant")}
        triton = stack.enter_context(TritonServer(repository, models=[cfg.model], log_file=out / "tritonserver.log"))
        common = {"texts": str(run.heldout), "feedback_fraction": 0.0, "triton_metrics_url": "none"}
        targets = {"triton": ({"target": "triton", "host": triton.http_url, "model": cfg.model,
                               "versions": str(version), "triton_metrics_url": triton.metrics_url}, [triton.pid])}
        if "router" in cfg.option_list:
            experiment = write_experiment(tmp / "bench.yaml", "bench", [("served", str(version), 100), ("idle", str(version), 0)], cfg.model)
            router = stack.enter_context(RouterProcess(experiment, triton_url=triton.http_url,
                                                       triton_grpc_url=triton.grpc_url,
                                                       log_file=out / "router.log"))
            targets["router"] = ({"target": "router", "host": router.url, "experiment": "bench"},
                                 [router.process.pid, triton.pid])
        peer_args = {"litserve": ("--max-batch-size", str(cfg.litserve_max_batch_size), "--batch-timeout",
                                  str(cfg.litserve_batch_timeout))}
        for name in ("fastapi-ort", "litserve"):
            if name in cfg.option_list:
                peer = stack.enter_context(peer_service(name, version_dir, cfg.threads, out / f"{name}.log",
                                                        peer_args.get(name, ())))
                targets[name] = ({"target": "triton", "host": peer.url, "model": name}, [peer.child.pid])
        if "baseline" in cfg.option_list:
            baseline = stack.enter_context(Service.baseline(run.merged, threads=cfg.threads,
                                                            log_path=out / "baseline.log"))
            targets["baseline"] = ({"target": "triton", "host": baseline.url, "model": "baseline"},
                                   [baseline.child.pid])
        peers = {o: pids for o, (_, pids) in targets.items() if o not in ("triton", "router")}
        results, samples = measure({o: (LoadTestConfig(**{**common, **targets[o][0]}), targets[o][1])
                                    for o in cfg.option_list if o in targets}, cfg, out, pausable=peers)
        if "triton-published" in cfg.option_list:  # last: it reloads the model with other settings
            with paused([pid for pids in peers.values() for pid in pids]):
                published, published_samples = measure_published(triton, cfg, repository / cfg.model, version,
                                                                  common, out, served)
            results.update(published)
            samples.update(published_samples)
    return results, served, samples


def run_bench(cfg: BenchConfig) -> BenchReport:
    run = RunLayout(cfg.run)
    for needed in (run.heldout, run.merged / "config.json"):
        if not needed.is_file():
            raise LoadTestError(f"{needed} is missing; run `make export NAME={run.name}` first")
    bench_run = BenchRun("servers", f"Benchmark: {run.name}, served side by side", cfg)
    data: dict = {"in_process": None, "served": None, "triton": None}
    samples: dict[str, np.ndarray] = {}
    if cfg.option_list:
        data["served"], data["triton"], samples = run_served(cfg, bench_run.folder)
    if cfg.in_process:
        from loadtests.peers.inprocess import inprocess_limit
        from training.data import read_jsonl

        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            repository, version = served_version(cfg, Path(tmp))
            texts = [ex.text for ex in read_jsonl(run.heldout)]
            data["in_process"] = inprocess_limit(repository / cfg.model / str(version), texts, cfg.threads,
                                                 cfg.in_process_s)
    data["ratios"], data["targets"] = ratios_and_targets(data)
    return bench_run.write(data, render, {"latency_cdf": samples} if samples else None)
