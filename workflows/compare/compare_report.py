"""The comparison's headline (LoRA against full fine-tuning), its Markdown table and its plot."""

from __future__ import annotations

from pathlib import Path

CLAIM = {"params_percent": 0.1, "accuracy_ratio": 0.97, "time_saved": 0.80}
"""The headline claim: LoRA trains ~0.1 % of the parameters, reaches ~97 % of full fine-tuning's
accuracy and cuts training time by ~80 %."""
HOLDS = {"params_percent": 0.2, "accuracy_ratio": 0.97, "time_saved": 0.75}
"""When each part counts as holding: params <= 0.2 %, accuracy ratio >= 0.97, time saved >= 75 %."""
MIN_LIFT = 0.02
"""Full fine-tuning must beat the majority-class accuracy by this much for the accuracy ratio to mean anything."""


def headline(rows: list[dict]) -> dict | None:
    """LoRA's figures as fractions of full fine-tuning's, and whether each part of the claim holds."""
    by = {r["method"]: r for r in rows}
    if "lora" not in by or "full" not in by:
        return None
    lora, full = by["lora"], by["full"]
    per_step = 1 - lora["seconds_per_step"] / full["seconds_per_step"]
    to_best = None
    if lora["seconds_to_best"] and full["seconds_to_best"]:
        to_best = 1 - lora["seconds_to_best"] / full["seconds_to_best"]
    out = {
        "params_percent": 100 * lora["trainable_params"] / full["trainable_params"],
        "accuracy_ratio": lora["accuracy"] / full["accuracy"] if full["accuracy"] else None,
        "time_saved_per_step": per_step,
        "time_saved_to_best": to_best,
    }
    baseline = full.get("majority_accuracy")
    learned = baseline is None or full["accuracy"] > baseline + MIN_LIFT
    out["holds"] = {
        "params": out["params_percent"] <= HOLDS["params_percent"],
        # None: inconclusive, full fine-tuning did not beat always answering the most common label
        "accuracy": (out["accuracy_ratio"] is not None and out["accuracy_ratio"] >= HOLDS["accuracy_ratio"]) if learned else None,
        "time_per_step": per_step >= HOLDS["time_saved"],
        "time_to_best": to_best is not None and to_best >= HOLDS["time_saved"],
    }
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(report: dict, plot_file: str) -> str:
    rows = report["rows"]
    out = [f"# Fine-tuning methods compared ({report['created']})", "",
           f"Same split, seed and batch for every method; budget {report['config']['time_budget_s']:.0f} s of training "
           "each. Accuracy, macro-F1 and ROC-AUC on the held-out test split (best validation checkpoint). "
           f"Served latency: {report['served_latency']}. In-process latency: {report.get('inprocess_latency', '-')}.", "",
           "| method | accuracy | macro-F1 | AUC | trainable params | % of all | steps | s/step | s to best val | "
           "train s | peak RSS MB | export parity | served P50 / P99 ms | in-process P50 ms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {_fmt(r['auc'], '.4f')} | "
                   f"{r['trainable_params']:,} | {100 * r['trainable_params'] / r['total_params']:.3f} | {r['steps']} | "
                   f"{r['seconds_per_step']:.3f} | {_fmt(r['seconds_to_best'], '.0f')} | {r['train_seconds']:.0f} | "
                   f"{r['peak_rss_mb']:.0f} | {r['export_parity']} | {_fmt(r['served_p50_ms'], '.2f')} / "
                   f"{_fmt(r.get('served_p99_ms'), '.2f')} ({r['served_variant']}) | {_fmt(r.get('inprocess_p50_ms'), '.2f')} |")
    out += ["", f"![accuracy against trainable parameters and time]({plot_file})", ""]
    h = report.get("headline")
    if h:
        yes = {True: "holds", False: "does not hold", None: "inconclusive (full fine-tuning is at the majority-class rate)"}
        out += ["## The headline claim (LoRA vs full fine-tuning)", "",
                f"- trainable parameters: {h['params_percent']:.3f} % of full fine-tuning's (claim ~0.1 %): "
                f"{yes[h['holds']['params']]} (rule: <= {HOLDS['params_percent']} %)",
                f"- accuracy: {_fmt(h['accuracy_ratio'], '.1%')} of full fine-tuning's (claim ~97 %): "
                f"{yes[h['holds']['accuracy']]}",
                f"- training time saved per optimizer step: {h['time_saved_per_step']:.0%} (claim ~80 %): "
                f"{yes[h['holds']['time_per_step']]}",
                f"- time saved to reach the best validation score: {_fmt(h['time_saved_to_best'], '.0%')}: "
                f"{yes[h['holds']['time_to_best']]}", "",
                "With a fixed budget per method every method trains for about the same wall-clock time, so "
                "'time saved' is measured two ways: seconds per optimizer step (same batch size), and seconds "
                "until the best validation evaluation.", ""]
    return "\n".join(out)


def write_plot(rows: list[dict], path: Path) -> None:
    """Accuracy against trainable parameters (log scale) and against seconds to the best validation score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        left.scatter(r["trainable_params"], r["accuracy"])
        left.annotate(r["method"], (r["trainable_params"], r["accuracy"]), textcoords="offset points", xytext=(5, 4))
        seconds = r["seconds_to_best"] or r["train_seconds"]
        right.scatter(seconds, r["accuracy"])
        right.annotate(r["method"], (seconds, r["accuracy"]), textcoords="offset points", xytext=(5, 4))
    left.set_xscale("log")
    left.set_xlabel("trainable parameters (log)")
    right.set_xlabel("seconds of training to the best validation score")
    for ax in (left, right):
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
    fig.suptitle("Fine-tuning methods: accuracy against trainable parameters and time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
