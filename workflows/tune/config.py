"""``python -m workflows tune``'s settings: one dataclass, mirrored one to one by the command line."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from export.contract import CONTRACT
from tunestack.problems import raise_problems
from workflows.tune.search import OFF, Objective, Space

SEARCHES = ("quick", "brute")
QUICK_TRIALS = 8
"""Trials a quick search runs when --max-trials is 0."""


class TuneError(Exception):
    """Tuning could not be configured or run; the message says what and why."""


def _ints(text: str, name: str, problems: list[str], allow_off: bool = False) -> tuple[int, ...]:
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if allow_off and part == "off":
            values.append(OFF)
        elif part.isdigit() and (int(part) >= 1 or (allow_off and int(part) == 0)):
            values.append(int(part))
        else:
            expected = "'off' or microseconds >= 0" if allow_off else "integers >= 1"
            problems.append(f"{name}: {part!r} is not valid; expected comma-separated {expected}, e.g. {text!r}")
    if not values:
        problems.append(f"{name} is empty; give at least one value")
    return tuple(values)


def _switches(text: str, name: str, problems: list[str]) -> tuple[bool, ...]:
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in ("off", "on"):
            values.append(part == "on")
        else:
            problems.append(f"{name}: {part!r} is not valid; expected 'off', 'on' or 'off,on'")
    if not values:
        problems.append(f"{name} is empty; give 'off', 'on' or 'off,on'")
    return tuple(sorted(set(values)))


def default_counts() -> str:
    """1 .. the machine's cores: instance counts and ORT threads worth trying here."""
    return ",".join(str(n) for n in range(1, (os.cpu_count() or 1) + 1))


@dataclass
class TuneConfig:
    """What to tune (a published version), under which objective, over which grid, and how long each trial runs."""

    repository: str = 'model_repository'
    """the model repository (a folder) holding the published model"""
    model: str = CONTRACT.default_model_name
    """Triton model name to tune"""
    version: int = 0
    """published version to tune (0: the newest dynamic-int8 version, else the newest); the winner is published as a NEW version"""
    objective: str = 'max-throughput'
    """what best means: max-throughput (with P99 <= --p99-bound-ms) or min-p99 (at --rate)"""
    p99_bound_ms: float = 100.0
    """max-throughput: only load levels with P99 <= this count"""
    rate: float = 20.0
    """min-p99: the arrival rate (requests/s, Poisson) the P99 is measured at"""
    search: str = 'quick'
    """quick: hill-climb from the published config; brute: every point of the grid"""
    max_trials: int = 0
    """trial budget (0: 8 for quick, the whole grid for brute)"""
    instance_counts: str = default_counts()
    """instance_group counts to try (KIND_CPU)"""
    threads: str = default_counts()
    """ONNX Runtime intra-op threads per instance to try"""
    queue_delays_us: str = 'off,0,2000'
    """dynamic batching: 'off' and/or max_queue_delay_microseconds values"""
    preferred_batch_sizes: str = ''
    """one preferred_batch_size set to try besides none, e.g. 4,8 (empty: none only)"""
    max_batch_sizes: str = '64'
    """max_batch_size values to try"""
    spinning: str = 'off,on'
    """ONNX Runtime intra-op threads busy-waiting: 'off' and/or 'on' (on: lower latency at low load for more CPU)"""
    users: int = 8
    """max-throughput: closed-loop Locust users at the top of each trial's ramp (2 cores saturate at 2-4)"""
    steps: int = 4
    """load levels per trial: users rise in equal steps up to --users (min-p99: the run is steps x step-time long)"""
    step_time_s: int = 5
    """seconds per load level"""
    texts: str = ''
    """held-out reviews (JSONL); default the tuned version's run: runs/NAME/merged/heldout.jsonl"""
    out_dir: str = 'reports'
    """the report goes to OUT_DIR/tune-TIMESTAMP/"""
    publish: bool = True
    """publish the winner as a new version (off: report only)"""
    tritonserver: str = ''
    """a tritonserver binary instead of nvidia-pytriton's"""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.search not in SEARCHES:
            problems.append(f"unknown search {self.search!r}; expected one of: {', '.join(SEARCHES)}")
        for name in ("users", "steps", "step_time_s"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.version < 0 or self.max_trials < 0:
            problems.append(f"version and max_trials must be >= 0, got {self.version} and {self.max_trials}")
        if str(self.repository).startswith("s3://"):
            problems.append(f"repository {self.repository}: tune needs a local folder (publish to s3 with `python -m export`)")
        try:
            self.objective_spec()
        except ValueError as e:
            problems.append(str(e).replace("\n  - ", " "))
        self._space(problems)
        raise_problems(problems, TuneError, "tune config")

    def _space(self, problems: list[str]) -> Space:
        preferred = _ints(self.preferred_batch_sizes, "preferred_batch_sizes", []) if self.preferred_batch_sizes else ()
        return Space(instance_count=_ints(self.instance_counts, "instance_counts", problems),
                     intra_op_threads=_ints(self.threads, "threads", problems),
                     max_queue_delay_us=_ints(self.queue_delays_us, "queue_delays_us", problems, allow_off=True),
                     preferred_batch_sizes=((), preferred) if preferred else ((),),
                     max_batch_size=_ints(self.max_batch_sizes, "max_batch_sizes", problems),
                     intra_op_spinning=_switches(self.spinning, "spinning", problems))

    def space(self) -> Space:
        return self._space([])

    def objective_spec(self) -> Objective:
        return Objective(self.objective, self.p99_bound_ms, self.rate if self.objective == "min-p99" else 0.0)

    @property
    def trial_budget(self) -> int | None:
        return self.max_trials or (QUICK_TRIALS if self.search == "quick" else None)

    @property
    def repository_path(self) -> Path:
        return Path(self.repository)

    def to_dict(self) -> dict:
        return asdict(self)
