"""One tuning trial on a real tritonserver: load the candidate as a config override, ramp Locust load, measure.

The server runs in explicit model-control mode; each trial reloads the tuned version with the candidate's
``instance_group``, ``intra_op_threads`` parameter, ``dynamic_batching`` and ``max_batch_size`` (a config
override on the load request: no restart, the repository is not touched). The load is the project's own
driver (``loadtests.run``: Locust with the run's held-out reviews); latencies are exact, from the per-request
log the locustfile writes (``loadtests.measure``), cut into one window per load level.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export import triton_config
from export.triton_model.model import SPINNING_PARAMETER
from loadtests.config import LoadTestConfig, LoadTestError
from loadtests.measure import ProcessTreeCPU, read_latencies, window_stats
from loadtests.run import PREFIX, run_loadtest
from serving.triton import TritonServer
from serving.tune.search import Candidate, Measurement
from tunestack.bench import summarize

log = logging.getLogger(__name__)

WARMUP_FRACTION = 0.2
"""The first part of each level's window is left out: users were still being added, sessions warming up."""


def candidate_of(config) -> Candidate:
    """The candidate a published ``config.pbtxt`` (ModelConfig) describes: where the quick search starts."""
    batching = config.HasField("dynamic_batching")
    delay = int(config.dynamic_batching.max_queue_delay_microseconds) if batching else -1
    preferred = tuple(int(b) for b in config.dynamic_batching.preferred_batch_size) if batching else ()
    return Candidate(instance_count=int(config.instance_group[0].count if config.instance_group else 1) or 1,
                     intra_op_threads=int(config.parameters["intra_op_threads"].string_value or 1),
                     max_queue_delay_us=delay, preferred_batch_sizes=preferred,
                     max_batch_size=int(config.max_batch_size or 1),
                     intra_op_spinning=(SPINNING_PARAMETER in config.parameters
                                        and config.parameters[SPINNING_PARAMETER].string_value == "1"))


def trial_config(base, version: int, c: Candidate):
    """``base`` (the published ModelConfig) with the candidate's settings, serving ``version`` only."""
    config = type(base)()
    config.CopyFrom(base)
    config.version_policy.Clear()
    config.version_policy.specific.versions.append(version)
    del config.instance_group[1:]
    if not config.instance_group:
        config.instance_group.add()
    config.instance_group[0].count = c.instance_count
    config.parameters["intra_op_threads"].string_value = str(c.intra_op_threads)
    config.parameters[SPINNING_PARAMETER].string_value = str(int(c.intra_op_spinning))
    config.max_batch_size = c.max_batch_size
    config.ClearField("dynamic_batching")
    if c.batching:
        config.dynamic_batching.max_queue_delay_microseconds = c.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(c.preferred_batch_sizes)
    return config


def load_config(server: TritonServer, config, version: int, timeout: float = 300.0) -> None:
    """Load ``config`` as an override and wait until ``version`` is ready; InferenceServerException if it fails."""
    with httpclient.InferenceServerClient(server.http_address, network_timeout=timeout) as client:
        client.load_model(config.name, config=triton_config.to_json(config))
        deadline = time.monotonic() + timeout
        while not client.is_model_ready(config.name, str(version)):
            if time.monotonic() > deadline:
                raise InferenceServerException(f"{config.name} version {version} not ready after {timeout:.0f} s")
            time.sleep(0.1)


@dataclass
class Load:
    """How a trial loads the server: a closed-loop ramp (max-throughput) or a fixed Poisson rate (min-p99)."""

    texts: Path
    users: int
    steps: int
    step_time_s: int
    rate: float = 0.0
    """> 0: open loop at this rate for steps x step_time_s, one level; 0: the closed-loop ramp."""

    def levels(self) -> list[float]:
        if self.rate > 0:
            return [self.rate]
        return [math.ceil(self.users * k / self.steps) for k in range(1, self.steps + 1)]

    def loadtest_config(self, server: TritonServer, model: str, version: int, out: Path) -> LoadTestConfig:
        common = dict(target="triton", host=server.http_url, model=model, versions=str(version),
                      texts=str(self.texts), feedback_fraction=0.0, triton_metrics_url=server.metrics_url,
                      run_time=f"{self.steps * self.step_time_s}s", out_dir=str(out))
        if self.rate > 0:
            return LoadTestConfig(**common, users=1, arrival_rate=self.rate)
        return LoadTestConfig(**common, users=self.users, shape="steps", steps=self.steps)


def split_levels(rows: list, load: Load, cpu: ProcessTreeCPU | None = None) -> list[dict]:
    """Exact stats per load level: window k is [t0 + k T, t0 + (k+1) T), its first WARMUP_FRACTION left out;
    with ``cpu``, also the server's CPU (% of one core) over the same window."""
    if not rows:
        return [{"load": lv, "requests": 0, **summarize([]), "throughput_rps": 0.0, "error_rate": 1.0}
                for lv in load.levels()]
    t0 = min(r.end_s - r.ms / 1000 for r in rows)
    length = load.step_time_s if load.rate <= 0 else load.step_time_s * load.steps
    out = []
    for k, level in enumerate(load.levels()):
        start, end = t0 + k * length + WARMUP_FRACTION * length, t0 + (k + 1) * length
        stats = window_stats(rows, start, end)
        out.append({"load": level, **stats, "server_cpu_percent": cpu.percent(start, end) if cpu else None})
    return out


def run_trial(server: TritonServer, base_config, version: int, c: Candidate, load: Load, folder: Path) -> Measurement:
    """Load ``c`` and measure it; a config Triton refuses, or a failed load test, is an infeasible trial."""
    try:
        load_config(server, trial_config(base_config, version, c), version)
    except InferenceServerException as e:
        log.warning("candidate %s did not load: %s", c.label(), e)
        return Measurement(error=f"did not load: {e}")
    try:
        with ProcessTreeCPU(server.pid) as cpu:
            result = run_loadtest(load.loadtest_config(server, base_config.name, version, folder))
    except LoadTestError as e:
        return Measurement(error=f"load test failed: {e}")
    levels = split_levels(read_latencies(result.folder / PREFIX), load, cpu)
    return Measurement(levels=levels, server_cpu_percent=levels[-1]["server_cpu_percent"] if levels else None)
