"""The load test report's PNG plots (matplotlib, Agg backend): latency CDF per variant, throughput and P99 over time,
output tokens/s over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def latency_cdf(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str,
                xlabel: str = "response time (ms, log scale)") -> Path:
    """``curves``: variant -> (latencies in ms, cumulative fractions in [0, 1]), drawn as steps."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, (ms, fraction) in curves.items():
        ax.step(ms, fraction, where="post", label=name, marker=".", markersize=4)
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", linewidth=0.5, linestyle=":")
        ax.annotate(f"p{round(q * 100)}", (0, q), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def over_time(series: dict[str, dict[str, list[float]]], users: tuple[list[float], list[float]], path: Path,
              title: str) -> Path:
    """``series``: variant -> {"t", "rps", "p99"}; ``users``: (t, user count). Two panels sharing the time axis."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, s in series.items():
        top.plot(s["t"], s["rps"], label=name, linewidth=1.2, marker=".")
        bottom.plot(s["t"], s["p99"], label=name, linewidth=1.2, marker=".")
    top.set_ylabel("throughput (req/s)")
    top.set_title(title)
    if users[0]:
        twin = top.twinx()
        twin.plot(users[0], users[1], color="grey", linestyle="--", linewidth=1, label="users")
        twin.set_ylabel("users", color="grey")
        twin.set_ylim(bottom=0)
    bottom.set_ylabel("P99 (ms, Locust's sliding window)")
    bottom.set_xlabel("time since start (s)")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tokens_over_time(series: dict[str, dict[str, list[float]]], path: Path, title: str) -> Path:
    """``series``: arm -> {"t": bin centres (s), "tokens_per_s"}."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, s in series.items():
        ax.plot(s["t"], s["tokens_per_s"], label=name, linewidth=1.2, marker=".")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("output tokens/s")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
