"""The one writer of a benchmark's results: ``reports/bench-NAME-TIMESTAMP/`` with bench.md, bench.json and plots.

    run = BenchRun("router", "Router overhead", cfg)          # the folder exists from here on
    ...                                                        # measure (logs may go into run.folder)
    report = run.write({"rows": rows}, render, cdfs={"latency_cdf": samples_by_arm})

``bench.json`` holds ``{"bench": NAME, "title", "config": the bench's settings, "machine": {cpus, platform,
python, load_average_at_start, load_average_at_end}, **data}``, every latency figure in it in the one
schema of ``tunestack.bench.stats.summarize``. ``bench.md`` is the title, one line about the machine, the
bench's own Markdown (``render(document)``) and the plots; each plot is a latency CDF per arm
(``latency_cdf.png``). Every bench's config inherits ``BenchOutput`` for ``--out-dir`` and ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunestack.configfile import config_to_dict

JSON_FILE = "bench.json"
MARKDOWN_FILE = "bench.md"


@dataclasses.dataclass
class BenchOutput:
    """Where a bench writes its report; every bench's config inherits these fields."""

    out_dir: str = "reports"
    """The report goes to OUT_DIR/bench-NAME-TIMESTAMP/ (bench.md, bench.json, PNG plots)."""
    out: str | None = None
    """The report folder itself, instead of OUT_DIR/bench-NAME-TIMESTAMP/ (e.g. a fixed path for a script)."""


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """What ``BenchRun.write`` wrote."""

    folder: Path
    json: Path
    markdown: Path
    plots: tuple[Path, ...]
    data: dict[str, Any]
    """The document written to ``json``."""


def machine() -> dict[str, Any]:
    """The machine a bench runs on, with the 1/5/15-minute load average now (``load_average_at_start``)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align``: one character per column, ``l`` or ``r`` (default: left)."""
    marks = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_cdf(samples: Mapping[str, np.ndarray], path: Path, title: str, xlabel: str = "latency (ms)") -> Path:
    """One empirical CDF per arm (log x axis), written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, values in samples.items():
        xs = np.sort(np.asarray(values, dtype=np.float64))
        if xs.size:
            ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=name)
    ax.set(xlabel=xlabel, ylabel="fraction of samples", title=title)
    if all(np.min(v) > 0 for v in samples.values() if len(v)):
        ax.set_xscale("log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class BenchRun:
    """One run of a bench: its report folder (made at the start, so the bench may write logs into it), the
    machine it ran on, and the writer."""

    def __init__(self, name: str, title: str, config: Any):
        self.name, self.title = name, title
        self.config = config_to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
        out = Path(config.out) if getattr(config, "out", None) else \
            Path(getattr(config, "out_dir", "reports")) / f"bench-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=True)
        self.folder = out
        self.machine = machine()

    def header(self, document: dict[str, Any]) -> str:
        """The title and one line about the machine and how busy it was."""
        m = document["machine"]
        start, end = m["load_average_at_start"][0], m["load_average_at_end"][0]
        busy = "a quiet machine" if max(start, end) < 0.75 * (m["cpus"] or 1) else "other work competed for the cores"
        return (f"# {self.title}\n\nMachine: {m['cpus']} CPUs, {m['platform']}; load average (1 min) {start:.1f} at "
                f"the start, {end:.1f} at the end ({busy}). Figures, not pass/fail: read the rows of one run side by "
                "side, not figures of different runs.\n")

    def write(self, data: dict[str, Any], render: Callable[[dict[str, Any]], str],
              cdfs: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> BenchReport:
        """Write bench.json (the document), bench.md (header, ``render(document)``, plots) and one latency CDF
        per entry of ``cdfs`` (file stem -> samples in ms by arm)."""
        machine_now = {**self.machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
        document = {"bench": self.name, "title": self.title, "config": self.config, "machine": machine_now, **data}
        plots = tuple(plot_cdf(samples, self.folder / f"{stem}.png", f"{self.title}: {stem.replace('_', ' ')}")
                      for stem, samples in (cdfs or {}).items())
        images = "".join(f"\n![{p.stem.replace('_', ' ')}]({p.name})\n" for p in plots)
        (self.folder / JSON_FILE).write_text(json.dumps(document, indent=2, default=str) + "\n")
        (self.folder / MARKDOWN_FILE).write_text(f"{self.header(document)}\n{render(document).rstrip()}\n{images}")
        return BenchReport(self.folder, self.folder / JSON_FILE, self.folder / MARKDOWN_FILE, plots, document)
