"""The search over serving configs, apart from any server: candidates, the objective, hill-climb and brute force.

A ``Candidate`` is one point of the grid (instance count x ORT intra-op threads x dynamic batching x
preferred batch sizes x max batch size). ``evaluate(candidate) -> Measurement`` is given by the caller
(a real Triton trial in ``workflows.tune.trial``, a synthetic surface in the tests), and the ``Objective``
turns a measurement into a score, higher is better, or None when the candidate misses the objective:

- ``max-throughput``: the highest throughput among the load levels whose P99 <= the bound (and few errors);
- ``min-p99``: minus the P99 at a given arrival rate, if that rate was served (and few errors).

``hill_climb`` is the quick search (as Triton Model Analyzer's quick mode): start from the published
config, try every neighbour (one dimension one step up or down), move to the best one that improves, stop
when none does or the trial budget is spent. Candidates that miss the objective are ranked by how close
they came (their lowest P99), so the climb keeps a direction until one meets it; a miss is never "best". ``brute_force`` tries every distinct candidate of the grid.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tunestack.problems import raise_problems

log = logging.getLogger(__name__)

OBJECTIVES = ("max-throughput", "min-p99")
OFF = -1
"""``max_queue_delay_us`` value meaning: no dynamic batching."""


@dataclass(frozen=True, order=True)
class Candidate:
    """One serving config: what a trial loads into Triton and the winner writes into config.pbtxt."""

    instance_count: int
    intra_op_threads: int
    max_queue_delay_us: int
    """Dynamic batching window in microseconds; ``OFF`` (-1): no dynamic batching."""
    preferred_batch_sizes: tuple[int, ...]
    max_batch_size: int
    intra_op_spinning: bool = False
    """ONNX Runtime's intra-op threads busy-wait (config parameter ``intra_op_spinning``)."""

    @property
    def batching(self) -> bool:
        return self.max_queue_delay_us != OFF

    def canonical(self) -> Candidate:
        """Preferred sizes only with batching and only up to max_batch_size; spinning only with more than one
        intra-op thread (one thread has no pool to spin): equal configs compare equal."""
        preferred = tuple(b for b in self.preferred_batch_sizes if b <= self.max_batch_size) if self.batching else ()
        return replace(self, preferred_batch_sizes=preferred,
                       intra_op_spinning=self.intra_op_spinning and self.intra_op_threads > 1)

    def label(self) -> str:
        batching = "no batching" if not self.batching else f"batching {self.max_queue_delay_us} us"
        if self.preferred_batch_sizes:
            batching += f" pref {','.join(map(str, self.preferred_batch_sizes))}"
        return (f"{self.instance_count} inst x {self.intra_op_threads} thr{' spinning' if self.intra_op_spinning else ''}, "
                f"{batching}, max batch {self.max_batch_size}")


DIMENSIONS = ("instance_count", "intra_op_threads", "max_queue_delay_us", "preferred_batch_sizes", "max_batch_size",
              "intra_op_spinning")


@dataclass(frozen=True)
class Space:
    """The values each dimension may take, in order (a neighbour is one step along one dimension)."""

    instance_count: tuple[int, ...]
    intra_op_threads: tuple[int, ...]
    max_queue_delay_us: tuple[int, ...]
    preferred_batch_sizes: tuple[tuple[int, ...], ...]
    max_batch_size: tuple[int, ...]
    intra_op_spinning: tuple[bool, ...] = (False,)

    def with_start(self, start: Candidate) -> Space:
        """This space with ``start``'s value added to each dimension (kept sorted), so the climb can begin there."""
        values = {}
        for name in DIMENSIONS:
            current = getattr(self, name)
            values[name] = tuple(sorted({*current, getattr(start, name)}))
        return Space(**values)

    def grid(self) -> list[Candidate]:
        """Every distinct candidate (after ``canonical``), in a stable order."""
        seen: dict[Candidate, None] = {}
        for values in itertools.product(*(getattr(self, name) for name in DIMENSIONS)):
            seen.setdefault(Candidate(*values).canonical(), None)
        return list(seen)

    def neighbours(self, c: Candidate) -> list[Candidate]:
        """Candidates one step away along one dimension (distinct from ``c`` after ``canonical``)."""
        out: dict[Candidate, None] = {}
        for name in DIMENSIONS:
            values = getattr(self, name)
            here = getattr(c, name)
            if here not in values:
                continue
            i = values.index(here)
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    n = replace(c, **{name: values[j]}).canonical()
                    if n != c.canonical():
                        out.setdefault(n, None)
        return list(out)


@dataclass
class Measurement:
    """What one trial saw: the load levels it ran (users or rate, throughput, exact P50/P99, errors)."""

    levels: list[dict] = field(default_factory=list)
    """Each: {"load": users (closed loop) or req/s (open loop), "throughput_rps", "p50_ms", "p99_ms", "error_rate"}."""
    server_cpu_percent: float | None = None
    """The server's CPU (process tree, % of one core) at the top load level."""
    error: str | None = None
    """Set when the trial could not run (the config did not load): the candidate is then infeasible."""


@dataclass(frozen=True)
class Objective:
    """What "best" means; ``score`` is higher-is-better, None for a candidate that misses it."""

    kind: str = "max-throughput"
    p99_bound_ms: float = 100.0
    rate: float = 0.0
    """min-p99: the arrival rate (requests/s) the P99 is measured at."""
    max_error_rate: float = 0.01

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in OBJECTIVES:
            problems.append(f"unknown objective {self.kind!r}; expected one of: {', '.join(OBJECTIVES)}")
        if self.p99_bound_ms <= 0:
            problems.append(f"p99_bound_ms must be > 0, got {self.p99_bound_ms}")
        if self.kind == "min-p99" and self.rate <= 0:
            problems.append(f"objective min-p99 needs a rate > 0 (requests/s), got {self.rate}")
        raise_problems(problems, ValueError, "objective")

    def usable(self, level: dict) -> bool:
        return level.get("p99_ms") is not None and level.get("error_rate", 1.0) <= self.max_error_rate

    def score(self, m: Measurement) -> float | None:
        if m.error:
            return None
        ok = [lv for lv in m.levels if self.usable(lv)]
        if self.kind == "max-throughput":
            within = [lv["throughput_rps"] for lv in ok if lv["p99_ms"] <= self.p99_bound_ms]
            return max(within, default=None)
        served = [lv for lv in ok if lv["throughput_rps"] >= 0.9 * self.rate]
        return max((-lv["p99_ms"] for lv in served), default=None)

    def closeness(self, m: Measurement) -> float:
        """For a candidate that misses the objective: minus its lowest P99 (higher is closer), so the climb
        still has a direction when no neighbour meets the objective yet (a loaded machine, a tight bound)."""
        p99s = [lv["p99_ms"] for lv in m.levels if self.usable(lv)]
        return -min(p99s) if p99s and not m.error else float("-inf")

    def rank(self, t: Trial) -> tuple:
        """Order of trials: those meeting the objective by score, then the others by closeness."""
        return (True, t.score) if t.score is not None else (False, self.closeness(t.measurement))

    def describe(self) -> str:
        if self.kind == "max-throughput":
            return f"max throughput with P99 <= {self.p99_bound_ms:g} ms"
        return f"min P99 at {self.rate:g} req/s"


@dataclass
class Trial:
    """One evaluated candidate, in the order the search tried it."""

    number: int
    candidate: Candidate
    measurement: Measurement
    score: float | None


@dataclass
class SearchResult:
    best: Candidate | None
    best_score: float | None
    trials: list[Trial]
    stopped_by_budget: bool = False


class _Evaluator:
    """Runs each distinct candidate once, in order, up to ``max_trials``; remembers every result."""

    def __init__(self, evaluate: Callable[[Candidate], Measurement], objective: Objective, max_trials: int | None):
        self.evaluate, self.objective, self.max_trials = evaluate, objective, max_trials
        self.trials: dict[Candidate, Trial] = {}

    @property
    def exhausted(self) -> bool:
        return self.max_trials is not None and len(self.trials) >= self.max_trials

    def __call__(self, c: Candidate) -> Trial | None:
        if c in self.trials:
            return self.trials[c]
        if self.exhausted:
            return None
        log.info("trial %d: %s", len(self.trials) + 1, c.label())
        m = self.evaluate(c)
        trial = Trial(len(self.trials) + 1, c, m, self.objective.score(m))
        log.info("trial %d: score %s%s", trial.number, trial.score, f" ({m.error})" if m.error else "")
        self.trials[c] = trial
        return trial

    def result(self) -> SearchResult:
        trials = list(self.trials.values())
        best = max(trials, key=lambda t: (t.score is not None, t.score or 0.0, -t.number), default=None)
        if best is None or best.score is None:
            return SearchResult(None, None, trials, self.exhausted)
        return SearchResult(best.candidate, best.score, trials, self.exhausted)


def hill_climb(space: Space, start: Candidate, evaluate: Callable[[Candidate], Measurement], objective: Objective,
               max_trials: int | None = None) -> SearchResult:
    """Steepest ascent from ``start`` over ``space`` (see the module docstring)."""
    space = space.with_start(start)
    run = _Evaluator(evaluate, objective, max_trials)
    current = start.canonical()
    here = run(current)
    while here is not None:
        tried = [t for t in (run(n) for n in space.neighbours(current)) if t is not None]
        step = max(tried, key=objective.rank, default=None)
        if step is None or objective.rank(step) <= objective.rank(here):
            break
        current, here = step.candidate, step
    return run.result()


def brute_force(space: Space, evaluate: Callable[[Candidate], Measurement], objective: Objective,
                max_trials: int | None = None) -> SearchResult:
    """Every distinct candidate of ``space`` (up to ``max_trials`` when given)."""
    run = _Evaluator(evaluate, objective, max_trials)
    for c in space.grid():
        if run(c) is None:
            break
    return run.result()
