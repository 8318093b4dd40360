"""``make demo``: the whole pipeline on the bundled model and data, then an A/B load test.

train (once) -> merge -> ONNX fp32 + int8 -> parity gate -> publish both as versions of one model
-> tritonserver + the A/B router (control fp32, treatment int8, 50/50, sticky by user)
-> a short Locust run that also sends the true labels as feedback, the live page's URL shown meanwhile
-> load-test and A/B reports, and a snapshot of the live page (page.html) -> every process stopped -> a short summary. A second run reuses the adapter, the export and the
published versions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.spec import GenerationTimeouts, write_experiment
from export.config import ExportConfig
from export.contract import CONTRACT
from export.pipeline import run_export
from loadtests.config import LoadTestConfig
from loadtests.run import run_loadtest
from serving.page.snapshot import SNAPSHOT_FILE, watch_page
from serving.router.process import RouterProcess
from serving.triton import TritonServer
from training.config import TrainConfig
from training.train import train
from tunestack import names
from tunestack.cli import parse_dataclass
from tunestack.logs import setup_logging

log = logging.getLogger(__name__)

EXPERIMENT = "sentiment-ab"


@dataclass
class DemoConfig:
    """The demo's knobs; every default runs on a 2-core machine in well under 15 minutes."""

    name: str = "demo"
    """Run name: runs/NAME/{adapter,merged,onnx}."""
    runs_dir: Path = Path("runs")
    """Folder holding the runs."""
    repository: Path = Path("model_repository")
    """The Triton model repository the variants are published to."""
    model_name: str = CONTRACT.default_model_name
    """Triton model name; fp32 and int8 become two of its versions."""
    time_budget_s: float = 180.0
    """Training wall-clock budget when the adapter does not exist yet."""
    rate: float = 25.0
    """Open-loop load: requests per second, Poisson arrivals from 1,000 distinct user ids (sticky keys)."""
    run_time: str = "45s"
    """How long the load test runs."""
    feedback_fraction: float = 1.0
    """Fraction of answers followed by the true label as feedback (accuracy per arm)."""
    out_dir: Path = Path("reports")
    """The demo's folder is OUT_DIR/demo-TIMESTAMP/ (the load-test report inside it)."""


def _step(n: int, text: str) -> None:
    log.info("[%d/5] %s", n, text)


def demo_folder(out_dir: Path, prefix: str = "demo") -> Path:
    """``OUT_DIR/PREFIX-YYYYmmdd-HHMMSS``: the demo's reports, server logs and ``demo.log``."""
    return Path(out_dir) / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_step(train_cfg: TrainConfig, what: str) -> dict:
    """Step 1: train ``train_cfg`` unless its adapter exists (then reuse it); the run's ``metrics.json``."""
    if (train_cfg.adapter_dir / names.ADAPTER_CONFIG_FILE).is_file():
        _step(1, f"training: reusing {train_cfg.adapter_dir}")
    else:
        _step(1, f"training: {what}, budget {train_cfg.time_budget_s:.0f} s")
        train(train_cfg)
    return json.loads((train_cfg.adapter_dir / names.METRICS_FILE).read_text())


def export_step(export_cfg: ExportConfig):
    """Step 2: merge, ONNX, the gates, publish; the export's result and {variant: published version}."""
    _step(2, "export: merge -> ONNX fp32 + int8 -> gates -> publish")
    export = run_export(export_cfg)
    if not export.passed:
        raise RuntimeError(f"the export's gate failed; see {export.onnx_dir / 'parity.json'}")
    return export, {variant: Path(path).name for variant, path in export.published.items()}


def ab_experiment(folder: Path, experiment: str, versions: dict[str, str], model: str,
                  timeout_s: float = names.ROUTER_TIMEOUT_S,
                  generation_timeouts: GenerationTimeouts | None = None) -> Path:
    """The demo's experiment file: control fp32, treatment int8, 50/50, sticky by user, the router waiting
    ``timeout_s`` for a classifier's answer and ``generation_timeouts`` on a stream; validated before anything
    starts."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_experiment(folder / "experiment.yaml", experiment,
                            [("control", versions["fp32"], 50), ("treatment", versions["int8"], 50)],
                            model, timeout_s=timeout_s, fallback="control", generation_timeouts=generation_timeouts)


@contextmanager
def serving(repository: Path, model: str, experiment_file: Path, folder: Path,
            router_args: tuple[str, ...] = ()) -> Iterator[tuple[TritonServer, RouterProcess]]:
    """Step 3: tritonserver on ``repository`` (``model`` only) and the A/B router on ``experiment_file``, their logs
    in ``folder``; both stopped on leaving."""
    _step(3, f"serving: tritonserver on {repository} and the A/B router")
    with TritonServer(repository, models=[model], log_file=folder / "tritonserver.log") as triton, \
            RouterProcess(experiment_file, triton_url=triton.http_url, triton_grpc_url=triton.grpc_url,
                          extra_args=list(router_args), log_file=folder / "router.log") as router:
        yield triton, router


def run_demo(cfg: DemoConfig, folder: Path | None = None) -> dict:
    """Run the demo; return the summary (also written to the demo folder as summary.json)."""
    started = time.monotonic()
    folder = folder or demo_folder(cfg.out_dir)
    train_cfg = TrainConfig(name=cfg.name, runs_dir=cfg.runs_dir, time_budget_s=cfg.time_budget_s)
    training_metrics = train_step(train_cfg, "LoRA on the bundled MiniLM")
    export, versions = export_step(ExportConfig(adapter=train_cfg.adapter_dir, runs_dir=cfg.runs_dir,
                                                repository=cfg.repository, model_name=cfg.model_name))
    experiment_file = ab_experiment(folder, EXPERIMENT, versions, cfg.model_name)
    # drift monitoring on every answered text (the load is short: at the default 10 % no arm would reach the
    # monitor's 200 texts); a look of the judge every 2 s for the live page's bands
    router_args = ("--model-repository", str(cfg.repository), "--drift-sample-rate", "1", "--look-interval-s", "2")
    with serving(cfg.repository, cfg.model_name, experiment_file, folder, router_args) as (triton, router):
        _step(4, f"load: Locust, {cfg.rate:g} requests/s for {cfg.run_time}, feedback on {cfg.feedback_fraction:.0%} of answers")
        load_cfg = LoadTestConfig(
            host=router.url, target="router", experiment=EXPERIMENT, users=4, arrival_rate=cfg.rate,
            user_population=1000, run_time=cfg.run_time,
            texts=str(export.merged_dir / names.HELDOUT_FILE), feedback_fraction=cfg.feedback_fraction,
            out_dir=str(folder), triton_metrics_url=triton.metrics_url,
        )
        with watch_page(router.url, EXPERIMENT, folder):  # the URL now, the snapshot when the load ends
            result = run_loadtest(load_cfg)
    _step(5, "reports written; every process stopped")
    summary = summarize(folder, result.folder, training_metrics, export.parity, versions, time.monotonic() - started)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
    return summary


def summarize(folder: Path, loadtest_folder: Path, training: dict, parity: dict, versions: dict, seconds: float) -> dict:
    load = json.loads((loadtest_folder / "summary.json").read_text())
    ab_path = loadtest_folder / "router_report.json"
    ab = json.loads(ab_path.read_text()) if ab_path.is_file() else {}
    arms = {}
    variant_of = {"control": "fp32", "treatment": "int8"}
    for arm, data in ab.get("arms", {}).items():
        lat = load.get("variants", {}).get(arm, {})
        acc = data.get("accuracy") or {}
        arms[arm] = {
            "variant": variant_of.get(arm, arm),
            "version": versions.get(variant_of.get(arm, ""), "?"),
            "requests": data.get("requests"),
            "accuracy": acc.get("estimate"),
            "accuracy_ci": [acc.get("low"), acc.get("high")] if acc else None,
            "offline_accuracy": parity["variants"].get(variant_of.get(arm, ""), {}).get("accuracy"),
            "p50_ms": lat.get("p50_ms"),
            "p99_ms": lat.get("p99_ms"),
            "throughput_rps": lat.get("throughput_rps"),
            "failures": lat.get("failures"),
        }
    judged = ab.get("judge") or {}
    verdicts = {metric: {k: m.get(k) for k in ("verdict", "estimate", "low", "high", "unit", "margin")}
                for metric, m in judged.get("treatments", {}).get("treatment", {}).get("metrics", {}).items()}
    drifted = sorted(f"{arm} {feature} (PSI {d['psi']:.2f})" for arm, feats in ab.get("drift", {}).items()
                     for feature, d in feats.items() if d.get("drifted"))
    return {
        "folder": str(folder),
        "loadtest_report": str(loadtest_folder / "report.md"),
        "ab_report": str(loadtest_folder / "router_report.md"),
        "page_snapshot": str(folder / SNAPSHOT_FILE) if (folder / SNAPSHOT_FILE).is_file() else None,
        "training": {"test_accuracy_before": training["test_before"]["accuracy"],
                     "test_accuracy_after": training["test_after"]["accuracy"]},
        "arms": arms,
        "judge_headline": judged.get("headline", "no verdicts (the router's report had no judge section)"),
        "sample_ratio": (judged.get("sample_ratio") or {}).get("verdict"),
        "verdicts_treatment_vs_control": verdicts,
        "drift": {"monitored": any(ab.get("drift", {}).values()), "drifted": drifted},
        "warnings": load.get("warnings", []),
        "seconds": round(seconds, 1),
    }


def verdict_text(m: dict) -> str:
    """``better (-2.1 ms [-3.0, -1.2])``: a judge's verdict, with the difference and its CS when it has a size."""
    if m.get("verdict") not in ("better", "worse") or m.get("estimate") is None:
        return str(m.get("verdict"))
    if m.get("low") is None or m.get("high") is None:
        return f"{m['verdict']} ({m['estimate']:.3g}{m.get('unit') or ''})"
    return f"{m['verdict']} ({m['estimate']:.3g}{m.get('unit') or ''} [{m['low']:.3g}, {m['high']:.3g}])"


def format_summary(summary: dict) -> str:
    lines = [
        f"training: test accuracy {summary['training']['test_accuracy_before']:.3f} -> "
        f"{summary['training']['test_accuracy_after']:.3f}",
        "",
        "| arm | variant (version) | requests | accuracy (feedback, 95% CI) | offline acc | P50 ms | P99 ms | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, a in summary["arms"].items():
        ci = a["accuracy_ci"]
        acc = f"{a['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if a["accuracy"] is not None and ci else "n/a"
        offline = f"{a['offline_accuracy']:.3f}" if a["offline_accuracy"] is not None else "n/a"
        p50 = f"{a['p50_ms']:.1f}" if a["p50_ms"] is not None else "n/a"
        p99 = f"{a['p99_ms']:.1f}" if a["p99_ms"] is not None else "n/a"
        lines.append(f"| {arm} | {a['variant']} (v{a['version']}) | {a['requests']} | {acc} | {offline} | {p50} | {p99} | {a['failures']} |")
    lines.append("")
    lines.append(f"judge: {summary['judge_headline']}")
    lines.append(f"judge (anytime-valid, users as units), sample ratio: {summary['sample_ratio']}; treatment (int8) "
                 "vs control (fp32): " + "; ".join(f"{metric.replace('_', ' ')}: {verdict_text(m)}"
                                                   for metric, m in summary["verdicts_treatment_vs_control"].items()))
    drift = summary.get("drift", {})
    if drift.get("monitored"):
        lines.append("drift against the training reference: " + (", ".join(drift["drifted"]) or "none"))
    else:
        lines.append("drift against the training reference: fewer monitored texts than the monitor needs (200 per arm)")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    lines += ["", f"load-test report: {summary['loadtest_report']}", f"A/B report:       {summary['ab_report']}",
              f"live page:        {summary.get('page_snapshot') or 'no snapshot (see demo.log)'}",
              f"summary:          {summary['folder']}/summary.json",
              f"finished in {summary['seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(DemoConfig, argv, "python -m workflows demo", __doc__.split("\n\n")[0])
    folder = demo_folder(cfg.out_dir)
    log_file = setup_logging(folder / "demo.log")  # progress here; library warnings only in the file
    summary = run_demo(cfg, folder)
    print("\n" + format_summary(summary) + f"\nlibrary log:      {log_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
