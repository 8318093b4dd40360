"""Feeds live traffic to the drift monitor, per arm, off the request path.

Each arm is compared with the training reference of the version it serves: ``drift_reference.json`` in
that version's folder of the model repository (``--model-repository``; written by the export stage). The
request path only decides, for each answered request, whether it is sampled (``--drift-sample-rate``,
default 0.1: one request in ten) and appends a few references to a bounded queue (at most
``MAX_PENDING``; beyond it the oldest are dropped and counted). A task wakes every ``interval_s`` and hands
the queue to a worker thread, which decodes the sampled texts (a BYTES tensor: JSON data or 4-byte
length-prefixed strings), tokenizes them with the version's own tokenizer and feeds
``experiments.drift.monitor.DriftMonitor``; then it sets the Prometheus gauges ``drift_psi`` and
``drift_detected`` (labels experiment, arm, feature) once an arm has ``MIN_SAMPLES`` (200) monitored texts:
below that the PSI of an unchanged distribution (about 9 / n on 10 bins) is too close to the 0.2 threshold.
The report reads ``report()``.

With an experiment store, each monitored text's features (a ``DriftSample``) and each reference (a
``DriftReferenceRow``) also go to ``sink`` (the store's writer), handed over on the event loop after each
drain; ``experiments.drift.monitor.drift_report`` compares the windows the store keeps exactly as the monitors
compare theirs, so a report from the store shows the drift the routers monitored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from tokenizers import Tokenizer

from experiments.drift.monitor import (
    KS_ALPHA,
    MIN_SAMPLES,
    PSI_THRESHOLD,
    DriftMonitor,
    FeatureDrift,
    Reference,
)
from experiments.spec import Experiment
from experiments.store.records import DriftReferenceRow, DriftSample, Record
from export.contract import CONTRACT
from export.drift_reference import text_features

log = logging.getLogger(__name__)

MAX_PENDING = 1000
"""Sampled requests waiting for the worker at most; more drop the oldest (``router_drift_dropped_samples``)."""
class VersionTokenizer:
    """A served version's own ``tokenizer.json`` (the ``tokenizers`` library, no transformers import), with
    what ``experiments.drift.monitor.text_features`` reads: ``tok(texts, add_special_tokens=False)["input_ids"]``
    and ``unk_token_id``. Never truncates: the reference counts every token too. It remembers its last
    call: the feed reads a sample's features for the store, then the monitor tokenizes the same texts, and
    one tokenization serves both."""

    def __init__(self, path: Path):
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()
        unk = json.loads(Path(path).read_text()).get("model", {}).get("unk_token")
        self.unk_token_id = self._tok.token_to_id(unk) if unk else None
        self._last: tuple[tuple, dict[str, list[list[int]]]] | None = None

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        key = (tuple(texts), add_special_tokens)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encoded]}
        self._last = (key, out)
        return out


def version_folder(repository: Path, model: str, version: str) -> Path | None:
    """The folder of ``version`` of ``model`` ("": the newest numbered one), or None."""
    model_dir = Path(repository) / model
    if version:
        return model_dir / version if (model_dir / version).is_dir() else None
    numbered = [p for p in model_dir.glob("[0-9]*") if p.is_dir() and p.name.isdigit()]
    return max(numbered, key=lambda p: int(p.name), default=None)


@dataclass(frozen=True)
class Sample:
    """One sampled answer, waiting for the worker: the texts are read there, not on the request path."""

    arm: str
    source: tuple[str, str]
    """(model, version) that served it."""
    texts: Callable[[], list[str]]
    labels: tuple[str, ...]
    confidences: tuple[float, ...]


class DriftFeed:
    """Samples answered requests per arm into one ``DriftMonitor`` per arm (its version's reference)."""

    def __init__(self, repository: str | Path, experiment: str, registry: CollectorRegistry, sample_rate: float = 0.1,
                 window: int = 2000, psi_threshold: float = PSI_THRESHOLD, ks_alpha: float = KS_ALPHA,
                 rng: random.Random | None = None):
        self.repository, self.experiment, self.registry = Path(repository), experiment, registry
        self.sample_rate, self.window = sample_rate, window
        self.psi_threshold, self.ks_alpha = psi_threshold, ks_alpha
        self._rng = rng or random.Random()
        self._pending: deque[Sample] = deque()
        self._monitors: dict[str, tuple[tuple[str, str], DriftMonitor]] = {}
        self._references: dict[tuple[str, str], tuple[Reference, VersionTokenizer] | None] = {}
        self._draining = threading.Lock()  # one drain at a time (the worker's, or the last one at shutdown)
        self._rows: list[Record] = []
        self.sink: Callable[[list[Record]], None] | None = None
        """Where the monitored samples and references also go (the store's writer); None: memory only."""
        self.m_dropped = Counter("router_drift_dropped_samples", "Sampled requests the drift worker could not keep "
                                 "up with (dropped, oldest first)", ["experiment"], registry=registry)
        self.m_sampled = Counter("router_drift_samples", "Texts fed to the drift monitor, by arm",
                                 ["experiment", "arm"], registry=registry)

    def offer(self, exp: Experiment, arm: str, texts: Callable[[], list[str]], labels: tuple[str, ...],
              confidences: Sequence[float]) -> None:
        """On the request path, after the answer: sample it (``sample_rate``) and queue it; O(1)."""
        if self.sample_rate <= 0 or (self.sample_rate < 1 and self._rng.random() >= self.sample_rate):
            return
        try:
            spec = exp.arm(arm)
        except KeyError:  # the arms changed while the request was in flight
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.m_dropped.labels(self.experiment).inc()
        self._pending.append(Sample(arm, (spec.model, spec.version), texts, labels, tuple(confidences)))

    def _reference(self, source: tuple[str, str]) -> tuple[Reference, VersionTokenizer] | None:
        if source not in self._references:
            folder = version_folder(self.repository, *source)
            path = folder / CONTRACT.drift_reference_file if folder else None
            if path is None or not path.is_file() or not (folder / "tokenizer.json").is_file():
                log.warning("no drift reference for model %s version %s (looked for %s): that arm is not monitored",
                            source[0], source[1] or "newest", path or self.repository / source[0])
                self._references[source] = None
            else:
                reference = Reference.read(path)
                self._references[source] = (reference, VersionTokenizer(folder / "tokenizer.json"))
                if self.sink is not None:
                    self._rows.append(DriftReferenceRow(self.experiment, *source, json.dumps(asdict(reference))))
                log.info("drift reference for %s: %s", source, path)
        return self._references[source]

    def _monitor(self, arm: str, source: tuple[str, str]) -> DriftMonitor | None:
        known = self._monitors.get(arm)
        if known is not None and known[0] == source:
            return known[1]
        found = self._reference(source)
        if found is None:
            return None
        monitor = DriftMonitor(found[0], found[1], self.window, self.psi_threshold, self.ks_alpha, MIN_SAMPLES)
        self._monitors[arm] = (source, monitor)  # a new version of the arm starts a fresh window
        return monitor

    def drain(self) -> int:
        """In the worker thread: feed every queued sample to its arm's monitor (and its features to the rows
        for ``sink``), then set the gauges."""
        with self._draining:
            return self._drain()

    def _drain(self) -> int:
        done, texts_by_arm = 0, {}
        while self._pending:
            s = self._pending.popleft()
            monitor = self._monitor(s.arm, s.source)
            texts = s.texts() if monitor is not None else []
            if not texts:
                continue
            labels = s.labels if len(s.labels) == len(texts) else ()
            confidences = s.confidences if len(s.confidences) == len(texts) else ()
            if self.sink is not None:
                self._keep(s, texts, labels, confidences, monitor.tokenizer)
            monitor.observe(s.arm, texts, labels, confidences)
            texts_by_arm[s.arm] = texts_by_arm.get(s.arm, 0) + len(texts)
            done += 1
        if done:
            for _, monitor in list(self._monitors.values()):
                monitor.export(self.registry, self.experiment)
        for arm, n in texts_by_arm.items():  # counted after the gauges are set: a count seen means gauges that include it
            self.m_sampled.labels(self.experiment, arm).inc(n)
        return done

    def _keep(self, s: Sample, texts: list[str], labels: tuple[str, ...], confidences: tuple[float, ...],
              tokenizer: VersionTokenizer) -> None:
        """The sample's texts as ``DriftSample`` rows for ``sink``."""
        feats, at = text_features(texts, tokenizer), time.time()
        for i in range(len(texts)):
            self._rows.append(DriftSample(self.experiment, s.arm, *s.source, float(feats["text_length"][i]),
                                          float(feats["unknown_token_rate"][i]), confidences[i] if confidences else None,
                                          labels[i] if labels else None, at, self.window))

    def hand_over(self) -> None:
        """On the event loop, after a drain: give the rows it made to ``sink``."""
        rows, self._rows = self._rows, []
        if rows and self.sink is not None:
            self.sink(rows)

    async def finish(self) -> None:
        """At shutdown, once the worker is cancelled: drain what is queued and hand it over."""
        if self._pending:
            await asyncio.to_thread(self.drain)
        self.hand_over()

    def report(self) -> dict[str, dict[str, FeatureDrift]]:
        """Per arm, per feature with enough samples: PSI, KS and whether it drifted (``DriftMonitor.report``)."""
        out: dict[str, dict[str, FeatureDrift]] = {}
        for arm, (_, monitor) in list(self._monitors.items()):
            out.update({a: f for a, f in monitor.report().items() if a == arm})
        return out

    async def run(self, interval_s: float = 0.5) -> None:
        """The worker loop: every ``interval_s``, drain the queue in a thread. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self._pending:
                try:
                    await asyncio.to_thread(self.drain)
                except Exception:  # a bad sample must not stop the monitoring
                    log.exception("drift worker failed on a batch; continuing")
            self.hand_over()

