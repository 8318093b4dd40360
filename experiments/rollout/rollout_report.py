"""The rollout report: ``reports/rollout-TIMESTAMP/`` with rollout.md, rollout.json, weights.png, intervals.png.

The Markdown says how the rollout ended and why, lists every decision it wrote to the store (the audit
log's rollout revisions) and the judge's verdicts at the last look (the sample-ratio check first); the
plots show the treatment's share over time and, per metric, the judge's interval of treatment - control at
every look with the +-margin band.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from experiments.experiment_report import judge_lines
from experiments.rollout.controller import Outcome


def report_folder(out_dir: str | Path) -> Path:
    """A new ``OUT_DIR/rollout-TIMESTAMP/`` (a suffix when two start in the same second)."""
    base = Path(out_dir) / f"rollout-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = base, 1
    while folder.exists():
        folder, n = base.with_name(f"{base.name}-{n}"), n + 1
    folder.mkdir(parents=True)
    return folder


def write_report(folder: Path, out: Outcome, audit: list[dict], config: dict[str, Any]) -> Path:
    """Write the report into ``folder``; return the Markdown file."""
    data = {"outcome": out.to_dict(), "audit": audit, "config": config}
    (folder / "rollout.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    plot_weights(out, audit, folder / "weights.png")
    plot_intervals(out, folder / "intervals.png")
    md = folder / "rollout.md"
    md.write_text(render_markdown(out, audit, config["judge"]))
    return md


def render_markdown(out: Outcome, audit: list[dict], judge_config: dict[str, Any]) -> str:
    """The report for a person: the outcome, the decisions written to the store, the last verdicts
    (``judge_config``: the rollout's ``JudgeConfig.to_dict()``)."""
    decided = f"{out.decided_in_s:.1f} s" if out.decided_in_s is not None else "-"
    lines = [f"# Rollout of `{out.treatment}` in experiment `{out.experiment}`", "",
             f"**{out.result}** at step {out.step}/{len(out.steps)} ({out.percent:g} % of traffic to `{out.treatment}`); "
             f"steps {', '.join(f'{s:g}' for s in out.steps)} %; control `{out.control}`"
             + (" (resumed after a restart)" if out.resumed else "") + ".", "",
             f"- final decision ({out.result}) after {decided} at its step: {out.reason}",
             f"- the treatment served {out.treatment_requests} requests to {out.treatment_users} users (distinct "
             "sticky keys) during the rollout",
             f"- {len(out.looks)} looks at the evidence; revisions written: {out.revisions or 'none'}", "",
             "![treatment share over time](weights.png)", "", "![intervals over time](intervals.png)", ""]
    ours = [a for a in audit if a["source"] == "rollout"]
    if ours:
        lines += ["## Decisions (the store's audit log)", "", "| revision | at (UTC) | weights | why |", "|---|---|---|---|"]
        lines += [f"| {a['revision']} | {a['at']} | " + ", ".join(f"{k} {v:g}" for k, v in a["weights"].items())
                  + f" | {a['why'].replace('|', '/')} |" for a in ours]
    if out.verdicts:
        lines += ["", f"Judge at the last look: {out.verdicts['headline']}", ""]
        lines += judge_lines({"judge": out.verdicts, "control": out.control, "alpha": judge_config["alpha"],
                              "tail": {"quantile": judge_config["quantile"]}})
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weights(out: Outcome, audit: list[dict], path: Path) -> None:
    """The treatment's share of traffic (percent) at each revision, as a step plot over time."""
    import datetime as dt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    points = []
    for a in audit:
        total = sum(a["weights"].values()) or 1.0
        t = dt.datetime.fromisoformat(a["at"]).timestamp() - out.started_at
        points.append((t, 100.0 * a["weights"].get(out.treatment, 0.0) / total))
    if out.looks:
        points.append((out.looks[-1].t - out.started_at, points[-1][1] if points else 0.0))
    if points:
        ax.step([p[0] for p in points], [p[1] for p in points], where="post", marker="o")
    ax.set_xlabel("seconds since the rollout started")
    ax.set_ylabel(f"share to {out.treatment} (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"rollout of {out.treatment}: {out.result}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_intervals(out: Outcome, path: Path) -> None:
    """Per metric, the interval of treatment - control at every look, its estimate, and the +-margin band."""
    plt = _plt()
    names = list(out.looks[0].metrics) if out.looks else []
    fig, axes = plt.subplots(max(1, len(names)), 1, figsize=(7, 1.9 * max(1, len(names))), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=False):
        t = [look.t - out.started_at for look in out.looks]
        ms = [look.metrics[name] for look in out.looks]
        low = [m["low"] if m["low"] is not None else float("nan") for m in ms]
        high = [m["high"] if m["high"] is not None else float("nan") for m in ms]
        est = [m["estimate"] if m["estimate"] is not None else float("nan") for m in ms]
        ax.fill_between(t, low, high, alpha=0.3, step="post", label="interval")
        ax.plot(t, est, drawstyle="steps-post", lw=1, label="estimate")
        margin = ms[-1]["margin"]
        ax.axhspan(-margin, margin, color="green", alpha=0.08, label=f"+-margin {margin:g}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel(f"{name}\n{ms[-1]['unit'].strip()}", fontsize=8)
        ax.set_title(f"{name}: {ms[-1]['verdict']}", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds since the rollout started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
