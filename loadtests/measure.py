"""Exact measurements for benchmarks and tuning: every request's own time, and a server's CPU.

Locust's statistics keep response times in buckets (whole milliseconds, coarser above 100 ms), so its
P50/P99 cannot tell 6.2 ms from 6.9 ms. Each Locust process therefore also writes every inference
request it timed to ``PREFIX_latency-PID.csv`` next to its ``--csv PREFIX`` files (the locustfile
imports this module, which registers the writer on Locust's ``init`` event). ``read_latencies`` reads
them back and ``window_stats`` gives exact percentiles (the bench harness's schema) and throughput for any
time window of a run.

``ProcessTreeCPU`` measures the CPU a server used (the process and all its children, e.g. Triton's
python stubs) between two points in time, from ``psutil``'s cumulative CPU times.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tunestack.bench import summarize

LATENCY_SUFFIX = "_latency-"
INFER = "infer"
"""The request type the locustfile gives inference requests (feedback and sticky rows are left out)."""


@dataclass(frozen=True)
class Request:
    """One timed request: when it ended (epoch seconds), its statistics name, its time, whether it succeeded."""

    end_s: float
    name: str
    ms: float
    ok: bool


class ProcessLog:
    """A file one Locust process appends its requests to, one line each; closed when Locust quits.

    A subclass names its file (``SUFFIX``, ``EXTENSION``), writes its header (``HEADER``) and its lines
    (``record``, a listener of Locust's request event); ``register`` opens one per process that writes CSV."""

    SUFFIX = ""
    EXTENSION = ""
    HEADER = ""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "w", buffering=1 << 16)  # noqa: SIM115 - closed on Locust's quitting event
        self.file.write(self.HEADER)

    def record(self, request_type, name, **kwargs) -> None:
        raise NotImplementedError

    def close(self, **_kwargs) -> None:
        if not self.file.closed:
            self.file.close()

    @classmethod
    def register(cls, events) -> None:
        """Open one log in every Locust process that writes CSV (the local runner or each worker), at
        ``PREFIX{SUFFIX}PID{EXTENSION}``."""

        @events.init.add_listener
        def _open(environment, **_kwargs) -> None:
            from locust.runners import MasterRunner

            prefix = getattr(environment.parsed_options, "csv_prefix", None) if environment.parsed_options else None
            if not prefix or isinstance(environment.runner, MasterRunner):
                return
            log = cls(Path(f"{prefix}{cls.SUFFIX}{os.getpid()}{cls.EXTENSION}"))
            environment.events.request.add_listener(log.record)
            environment.events.quitting.add_listener(log.close)


class LatencyLog(ProcessLog):
    """Each inference request of one Locust process: when it ended, its row, its time, whether it succeeded."""

    SUFFIX, EXTENSION, HEADER = LATENCY_SUFFIX, ".csv", "end_s,name,ms,ok\n"

    def record(self, request_type, name, response_time, exception=None, start_time=None, **_kwargs) -> None:
        if request_type != INFER or self.file.closed:
            return
        ms = float(response_time or 0.0)
        end = (start_time + ms / 1000) if start_time else time.time()
        self.file.write(f"{end:.6f},{name.replace(',', ';')},{ms:.4f},{0 if exception else 1}\n")


def read_latencies(prefix: str | Path) -> list[Request]:
    """Every request the Locust processes of one run recorded (``PREFIX_latency-*.csv``), by end time."""
    prefix = Path(prefix)
    rows: list[Request] = []
    for path in sorted(prefix.parent.glob(f"{prefix.name}{LATENCY_SUFFIX}*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    rows.append(Request(float(row["end_s"]), row["name"], float(row["ms"]), row["ok"] == "1"))
                except (KeyError, TypeError, ValueError):
                    continue  # a line cut short when a process was killed
    return sorted(rows, key=lambda r: r.end_s)


def window_stats(rows: list[Request], start_s: float | None = None, end_s: float | None = None) -> dict:
    """The requests ending in [start, end): their count, the exact figures of the successful ones' times
    (``tunestack.bench.summarize``: ``n``, ``mean_ms``, ``p50_ms``, ``p90_ms``, ``p99_ms``), throughput and
    error rate."""
    whole = end_s is None  # the whole run: up to and including the last request
    if start_s is None:
        start_s = rows[0].end_s if rows else 0.0
    if end_s is None:
        end_s = rows[-1].end_s if rows else start_s
    inside = [r for r in rows if start_s <= r.end_s and (r.end_s < end_s or (whole and r.end_s == end_s))]
    ok = [r.ms for r in inside if r.ok]
    seconds = max(end_s - start_s, 1e-9)
    return {"requests": len(inside), **summarize(ok), "seconds": seconds, "throughput_rps": len(ok) / seconds,
            "error_rate": (len(inside) - len(ok)) / len(inside) if inside else 0.0}


class ProcessTreeCPU:
    """CPU used by processes and their children (e.g. tritonserver and its python stubs), in % of one core.

    ``start()`` / ``stop()`` measure one span; used as a context manager it also samples the cumulative CPU
    seconds every ``interval`` s in a thread, so ``percent(start_s, end_s)`` gives any window of the run
    (the windows of a load test's levels, read from its latency log, without Locust's start-up in them).
    """

    def __init__(self, *pids: int, interval: float = 0.25):
        self.pids = [p for p in pids if p]
        self.interval = interval
        self.started: tuple[float, float] | None = None
        self.samples: list[tuple[float, float]] = []  # (epoch seconds, cumulative CPU seconds)
        self._seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> its CPU seconds when last seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cpu_seconds(self) -> float:
        """Cumulative CPU seconds of the trees, never going down: a process that exits keeps its last value."""
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    self._seen[(proc.pid, proc.create_time())] = t.user + t.system
                except psutil.NoSuchProcess:
                    continue
        return sum(self._seen.values())

    def start(self) -> ProcessTreeCPU:
        self.started = (time.monotonic(), self.cpu_seconds())
        return self

    def stop(self) -> float:
        """Percent of one core used since ``start()`` (200 = both cores of a 2-core machine, busy)."""
        assert self.started is not None, "ProcessTreeCPU.stop() before start()"
        wall, cpu = self.started
        return 100.0 * (self.cpu_seconds() - cpu) / max(time.monotonic() - wall, 1e-9)

    def _sample(self) -> None:
        while True:
            self.samples.append((time.time(), self.cpu_seconds()))
            if self._stop.wait(self.interval):
                self.samples.append((time.time(), self.cpu_seconds()))
                return

    def __enter__(self) -> ProcessTreeCPU:
        self._thread = threading.Thread(target=self._sample, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def percent(self, start_s: float, end_s: float) -> float | None:
        """% of one core over [start_s, end_s] (epoch seconds), from the samples just around it; None if < 2."""
        if len(self.samples) < 2:
            return None
        before = [x for x in self.samples if x[0] <= start_s]
        after = [x for x in self.samples if x[0] >= end_s]
        (t0, c0), (t1, c1) = (before[-1] if before else self.samples[0]), (after[0] if after else self.samples[-1])
        return 100.0 * (c1 - c0) / (t1 - t0) if t1 > t0 else None
