"""``make demo-llm``: the causal LM through the whole stack, then an A/B load test that streams.

fine-tune SmolLM2-135M-Instruct (LoRA, time-budgeted; once) -> merge -> ONNX with KV cache fp32 + int8 ->
token-parity and int8 quality gates -> publish both as versions of one model -> tritonserver + the A/B router
(control fp32, treatment int8, 50/50, sticky by user, OpenAI chat completions) -> a short Locust run streaming
held-out prompts (``--workload chat``) -> the load-test report (TTFT, ITL, TPOT, tokens/s, goodput per arm)
-> every process stopped -> a summary: ROUGE-L before and after fine-tuning, TTFT, ITL and tokens/s per arm,
and where the time went. The steps are ``workflows.demo``'s; a second run reuses the adapter, the export and
the published versions.

The defaults fit in about 10 minutes on a 2-core machine (docs/generative.md): scoring and the gates decode
fewer held-out prompts than ``make train-llm`` / ``make export-llm`` do.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from experiments.spec import GenerationTimeouts
from export.config import ExportConfig
from export.contract import GENERATIVE
from loadtests.config import LoadTestConfig
from loadtests.run import run_loadtest
from training.config import TrainConfig
from tunestack import names
from tunestack.cli import parse_dataclass
from tunestack.logs import setup_logging
from workflows.demo import _step, ab_experiment, demo_folder, export_step, serving, train_step

EXPERIMENT = "verdict-ab"
VARIANT_OF = {"control": "fp32", "treatment": "int8"}


@dataclass
class DemoLLMConfig:
    """The generative demo's knobs; the defaults fit in about 10 minutes on a 2-core machine."""

    name: str = "llm"
    """Run name: runs/NAME/{base,adapter,merged,onnx}."""
    runs_dir: Path = Path("runs")
    """Folder holding the runs."""
    model: Path | None = None
    """Base model (a Hugging Face folder or a .gguf); None: the bundled SmolLM2-135M-Instruct."""
    repository: Path = Path("model_repository")
    """The Triton model repository the variants are published to."""
    model_name: str = GENERATIVE.default_model_name
    """Triton model name; fp32 and int8 become two of its versions."""
    time_budget_s: float = 180.0
    """Training wall-clock budget when the adapter does not exist yet."""
    max_steps: int | None = None
    """Stop training after this many steps, if the budget lasts (None: the budget alone; a fixed count makes the
    run reproducible, seeded as it is)."""
    threads: int | None = None
    """torch intra-op threads for training (None: torch's default; 1 is faster on a busy machine)."""
    batch_size: int = 4
    """Training batch size: small, so a short budget makes more optimizer steps."""
    learning_rate: float = 5e-3
    """LoRA learning rate: high, so the verdict's format is learned in a few tens of steps."""
    scored_examples: int = 16
    """Held-out prompts scored before and after fine-tuning (ROUGE-L) and decoded by the int8 quality gate."""
    parity_prompts: int = 4
    """Held-out prompts whose greedy tokens the fp32 export must reproduce exactly."""
    rate: float = 0.5
    """Open-loop load: completions per second, Poisson arrivals from 1,000 distinct user ids (sticky keys)."""
    run_time: str = "40s"
    """How long the load test runs."""
    max_tokens: int = 24
    """max_tokens of each streamed completion (the task's references are 8-20 tokens)."""
    first_token_timeout_s: float = 30.0
    """The experiment's ``generation_timeouts.first_token_s``: how long the router waits for an arm's first token."""
    out_dir: Path = Path("reports")
    """The demo's folder is OUT_DIR/demo-llm-TIMESTAMP/ (the load-test report inside it)."""


def run_demo_llm(cfg: DemoLLMConfig, folder: Path | None = None) -> dict:
    """Run the demo; return the summary (also written to the demo folder as summary.json)."""
    folder = folder or demo_folder(cfg.out_dir, "demo-llm")
    seconds, started = {}, time.monotonic()
    train_cfg = TrainConfig(task="causal-lm", name=cfg.name, runs_dir=cfg.runs_dir, model=cfg.model,
                            time_budget_s=cfg.time_budget_s, max_steps=cfg.max_steps, threads=cfg.threads,
                            batch_size=cfg.batch_size,
                            learning_rate=cfg.learning_rate, generation_examples=cfg.scored_examples,
                            max_new_tokens=20, eval_every=10, eval_max_examples=16)
    training = train_step(train_cfg, "LoRA on the bundled SmolLM2-135M-Instruct")
    seconds["train"], mark = time.monotonic() - started, time.monotonic()
    export, versions = export_step(ExportConfig(
        adapter=train_cfg.adapter_dir, runs_dir=cfg.runs_dir, repository=cfg.repository, model_name=cfg.model_name,
        quality_examples=cfg.scored_examples, generation_parity_prompts=cfg.parity_prompts))
    seconds["export"], mark = time.monotonic() - mark, time.monotonic()
    experiment_file = ab_experiment(folder, EXPERIMENT, versions, cfg.model_name,
                                    generation_timeouts=GenerationTimeouts(first_token_s=cfg.first_token_timeout_s))
    with serving(cfg.repository, cfg.model_name, experiment_file, folder) as (triton, router):
        seconds["serving_start"], mark = time.monotonic() - mark, time.monotonic()
        _step(4, f"load: Locust, {cfg.rate:g} streamed chat completions per second ({cfg.max_tokens} tokens at "
                 f"most) for {cfg.run_time}")
        result = run_loadtest(LoadTestConfig(
            workload="chat", target="router", host=router.url, experiment=EXPERIMENT, users=1, arrival_rate=cfg.rate,
            user_population=1000, run_time=cfg.run_time, max_tokens=cfg.max_tokens, texts=str(export.merged_dir / names.HELDOUT_FILE),
            out_dir=str(folder), triton_metrics_url=triton.metrics_url))
        seconds["load"], mark = time.monotonic() - mark, time.monotonic()
    seconds["stop"] = time.monotonic() - mark
    _step(5, "reports written; every process stopped")
    summary = summarize(folder, result.folder, training, versions, seconds, time.monotonic() - started)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
    return summary


def summarize(folder: Path, loadtest_folder: Path, training: dict, versions: dict, seconds: dict,
              total_s: float) -> dict:
    """What the demo prints: ROUGE-L before/after, per arm TTFT/ITL/tokens/s, the reports, where the time went."""
    load = json.loads((loadtest_folder / "summary.json").read_text())
    arms = {}
    for arm, a in ((load.get("generation") or {}).get("arms") or {}).items():
        variant = VARIANT_OF.get(arm, arm)
        arms[arm] = {"variant": variant, "version": versions.get(variant, "?"), "completions": a["requests"],
                     "failures": a["failures"], "ttft_p50_ms": a["ttft"]["p50_ms"], "ttft_p99_ms": a["ttft"]["p99_ms"],
                     "itl_p50_ms": a["itl"]["p50_ms"], "itl_p99_ms": a["itl"]["p99_ms"],
                     "tokens_per_s": a["tokens_per_s"], "goodput_rps": a["goodput_rps"]}
    before, after = training["test_before"], training["test_after"]
    return {
        "folder": str(folder),
        "loadtest_report": str(loadtest_folder / "report.md"),
        "training": {"rouge_l_before": before["rouge_l"], "rouge_l_after": after["rouge_l"],
                     "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
                     "examples": after.get("examples"), "steps": training.get("steps")},
        "arms": arms,
        "judge_headline": ((load.get("router_report") or {}).get("judge") or {}).get("headline"),
        "warnings": load.get("warnings", []),
        "seconds_by_step": {k: round(v, 1) for k, v in seconds.items()},
        "seconds": round(total_s, 1),
    }


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def format_summary(summary: dict) -> str:
    t = summary["training"]
    lines = [f"training: ROUGE-L {t['rouge_l_before']:.1f} -> {t['rouge_l_after']:.1f} on {t['examples']} held-out "
             f"prompts, perplexity of the references {t['perplexity_before']:.2f} -> {t['perplexity_after']:.2f} "
             f"({t['steps']} steps)", "",
             "| arm | variant (version) | completions | failures | TTFT p50 / p99 ms | ITL p50 / p99 ms | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for arm, a in summary["arms"].items():
        lines.append(f"| {arm} | {a['variant']} (v{a['version']}) | {a['completions']} | {a['failures']} "
                     f"| {_ms(a['ttft_p50_ms'])} / {_ms(a['ttft_p99_ms'])} | {_ms(a['itl_p50_ms'])} / "
                     f"{_ms(a['itl_p99_ms'])} | {a['tokens_per_s']:.1f} |")
    lines.append("")
    if summary.get("judge_headline"):
        lines.append(f"judge: {summary['judge_headline']}")
    for warning in summary["warnings"]:
        lines.append(f"warning: {warning}")
    steps = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in summary["seconds_by_step"].items())
    lines += [f"load-test report: {summary['loadtest_report']}", f"summary:          {summary['folder']}/summary.json",
              f"finished in {summary['seconds']:.0f} s ({steps})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(DemoLLMConfig, argv, "python -m workflows demo-llm", __doc__.split("\n\n")[0])
    folder = demo_folder(cfg.out_dir, "demo-llm")
    log_file = setup_logging(folder / "demo.log")  # progress here; library warnings only in the file
    summary = run_demo_llm(cfg, folder)
    print("\n" + format_summary(summary) + f"\nlibrary log:      {log_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
