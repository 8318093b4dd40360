"""Prove a causal LM's export: greedy tokens against torch, and int8's quality against fp32, on held-out data.

The gate (thresholds in ``ExportConfig``):

- fp32: for each of ``generation_parity_prompts`` held-out prompts, the decode loop over ONNX Runtime
  (``export.generate``) must choose exactly the tokens transformers' greedy ``generate`` chooses, from the
  same prompt ids (``tokenizer.json`` alone must encode as the transformers tokenizer does), and every
  step's logits must stay within ``logit_max_abs_diff`` of torch's (compared up to the first differing
  token). Each prompt is reported with its token counts, first divergence and max |logit diff|.
- int8 (and fp32, for reference): ROUGE-L, BLEU-4 and first-word match of greedy outputs and the
  references' perplexity (teacher-forced through the same graph) on ``quality_examples`` held-out
  examples; int8 may lose at most ``int8_max_rouge_drop`` ROUGE-L points and gain at most
  ``int8_max_perplexity_increase`` (relative) perplexity against fp32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from export.config import ExportConfig
from export.contract import CONTRACT, GENERATIVE_VARIANT_FILES
from export.decoding import SamplingParams
from export.errors import InputError
from export.generate import Generator
from training.causal_data import read_gen_jsonl
from training.gen_metrics import perplexity, text_scores, token_nll
from tunestack import names
from tunestack.files import sha256

log = logging.getLogger(__name__)

GATE_SETTINGS = ("generation_parity_prompts", "generation_max_new_tokens", "logit_max_abs_diff", "quality_examples",
                 "int8_max_rouge_drop", "int8_max_perplexity_increase")
"""The settings a causal parity report depends on, besides the files: a change re-runs the check."""
QUALITY_BATCH = 8
"""Held-out prompts decoded together when scoring a variant's outputs."""


def _check(name: str, value: float, threshold: float, passed: bool) -> dict:
    return {"name": name, "value": float(value), "threshold": float(threshold), "passed": bool(passed)}


def torch_reference(merged_dir: Path, prompts: list[str], max_new_tokens: int):
    """transformers' greedy generation (batch 1, so no padding is involved) with each step's logits, and the prompt ids."""
    from training.causal_eval import generate_greedy
    from training.causal_model import load_causal_lm, load_causal_tokenizer

    tokenizer = load_causal_tokenizer(merged_dir)
    model = load_causal_lm(merged_dir)
    generated = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size=1, keep_logits=True)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return generated, prompt_ids


def token_parity(generator: Generator, prompts: list[str], reference, reference_ids: list[list[int]],
                 max_new_tokens: int) -> list[dict]:
    """Per prompt: the ONNX decode loop's greedy tokens and logits against torch's."""
    rows = []
    for i, prompt in enumerate(prompts):
        ids = generator.encode(prompt)
        tokens = list(generator.stream(ids, SamplingParams(max_tokens=max_new_tokens)))
        onnx_ids, torch_ids = [t.id for t in tokens], reference.token_ids[i]
        common = min(len(onnx_ids), len(torch_ids))
        diverge = next((k for k in range(common) if onnx_ids[k] != torch_ids[k]), None)
        steps = common if diverge is None else diverge + 1
        diff = max((float(np.abs(tokens[k].logits - reference.logits[i][k]).max()) for k in range(steps)), default=0.0)
        rows.append({"prompt": i, "prompt_ids_equal": ids == reference_ids[i], "torch_tokens": len(torch_ids),
                     "onnx_tokens": len(onnx_ids), "tokens_equal": onnx_ids == torch_ids, "first_divergence": diverge,
                     "max_abs_logit_diff": diff, "onnx_text": "".join(t.text for t in tokens)})
    return rows


def reference_perplexity(generator: Generator, prompts: list[str], targets: list[str]) -> float:
    """Perplexity of ``targets`` after ``prompts``: one forward pass per example through the graph, cache empty."""
    total, count = 0.0, 0
    for prompt, target in zip(prompts, targets, strict=True):
        p_ids, t_ids = generator.encode(prompt), generator.encode(target)
        ids = np.asarray([p_ids + t_ids], dtype=np.int64)
        logits, _ = generator.decoder.run(ids, np.ones_like(ids), np.arange(ids.shape[1], dtype=np.int64)[None],
                                          generator.decoder.empty_past(1))
        predicting = logits[0, len(p_ids) - 1 : -1]
        total += float(token_nll(predicting, np.asarray(t_ids)).sum())
        count += len(t_ids)
    return perplexity(total, count)


def quality(generator: Generator, rows: list[dict], eos_text: str, max_new_tokens: int) -> dict:
    """ROUGE-L, BLEU-4, matches and perplexity of one variant on the held-out ``rows``."""
    prompts = [r["prompt"] for r in rows]
    references = [r["reference"] for r in rows]
    outputs = []
    for start in range(0, len(prompts), QUALITY_BATCH):
        batch = [generator.encode(p) for p in prompts[start : start + QUALITY_BATCH]]
        outputs += [c.text for c in generator.generate_batch(batch, SamplingParams(max_tokens=max_new_tokens))]
    scores = text_scores(outputs, references)
    scores["perplexity"] = reference_perplexity(generator, prompts, [r + eos_text for r in references])
    scores["samples"] = [{"output": o, "reference": r} for o, r in zip(outputs[:3], references[:3], strict=True)]
    return scores


def _gate(fp32: dict, int8: dict | None, cfg: ExportConfig) -> None:
    prompts = fp32["prompts"]
    equal = sum(p["tokens_equal"] and p["prompt_ids_equal"] for p in prompts)
    fp32["max_abs_logit_diff"] = max((p["max_abs_logit_diff"] for p in prompts), default=0.0)
    fp32["checks"] = [
        _check("prompts_with_equal_tokens", equal, len(prompts), equal == len(prompts)),
        _check("max_abs_logit_diff", fp32["max_abs_logit_diff"], cfg.logit_max_abs_diff,
               fp32["max_abs_logit_diff"] <= cfg.logit_max_abs_diff),
    ]
    fp32["publishable"] = all(c["passed"] for c in fp32["checks"])
    if int8 is not None:
        drop = fp32["rouge_l"] - int8["rouge_l"]
        rise = int8["perplexity"] / fp32["perplexity"] - 1.0
        int8["checks"] = [
            _check("rouge_l_drop_points", drop, cfg.int8_max_rouge_drop, drop <= cfg.int8_max_rouge_drop),
            _check("perplexity_increase", rise, cfg.int8_max_perplexity_increase, rise <= cfg.int8_max_perplexity_increase),
            _check("fp32_export_passed", float(fp32["publishable"]), 1.0, fp32["publishable"]),
        ]
        int8["publishable"] = all(c["passed"] for c in int8["checks"])


def check_causal_parity(onnx_dir: Path, merged_dir: Path, cfg: ExportConfig) -> dict:
    """Run both gates; write ``onnx_dir/parity.json`` and return it (reused when files and settings are unchanged)."""
    heldout = cfg.parity_data or merged_dir / names.HELDOUT_FILE
    if not heldout.is_file():
        raise InputError(f"no held-out data for the parity gate: {heldout} does not exist (pass --parity-data FILE.jsonl)")
    needed = ["fp32"] + [v for v in cfg.variants if v != "fp32"]
    files = {v: onnx_dir / GENERATIVE_VARIANT_FILES[v] for v in needed}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise InputError(f"{', '.join(missing)} missing; run the ONNX export with --variants {','.join(needed)}")
    source = {"heldout_sha256": sha256(heldout), "files_sha256": {v: sha256(f) for v, f in files.items()},
              "merged_sha256": sha256(merged_dir / "model.safetensors"),
              "settings": {k: getattr(cfg, k) for k in GATE_SETTINGS}, "requested": list(cfg.variants)}
    previous = onnx_dir / CONTRACT.parity_file
    if previous.is_file() and json.loads(previous.read_text()).get("source") == source:
        log.info("parity already checked for these exact files: %s", previous)
        return json.loads(previous.read_text())
    rows = read_gen_jsonl(heldout)
    prompts = [r["prompt"] for r in rows[: cfg.generation_parity_prompts]]
    log.info("parity: torch greedy reference on %d held-out prompts", len(prompts))
    reference, reference_ids = torch_reference(merged_dir, prompts, cfg.generation_max_new_tokens)
    eos_text = json.loads((merged_dir / "special_tokens_map.json").read_text())["eos_token"]
    eos_text = eos_text["content"] if isinstance(eos_text, dict) else eos_text
    variants: dict[str, dict] = {}
    for variant, path in files.items():
        log.info("parity: %s (%s)", variant, path.name)
        generator = Generator.from_folder(onnx_dir, path.name)
        entry = {"variant": variant, "file": path.name}
        if variant == "fp32":
            entry["prompts"] = token_parity(generator, prompts, reference, reference_ids, cfg.generation_max_new_tokens)
        entry.update(quality(generator, rows[: cfg.quality_examples], eos_text, cfg.generation_max_new_tokens))
        variants[variant] = entry
    _gate(variants["fp32"], variants.get("int8"), cfg)
    metrics_file = merged_dir / "metrics.json"
    trained = json.loads(metrics_file.read_text()).get("test_after", {}) if metrics_file.is_file() else {}
    report = {
        "task": "causal-lm", "heldout": str(heldout), "examples": min(len(rows), cfg.quality_examples),
        "parity_prompts": len(prompts), "max_new_tokens": cfg.generation_max_new_tokens,
        "torch": {k: trained.get(k) for k in ("rouge_l", "bleu4", "perplexity", "first_word_match", "examples")},
        "requested": list(cfg.variants), "variants": variants,
        "passed": all(variants[v]["publishable"] for v in cfg.variants), "source": source,
    }
    (onnx_dir / CONTRACT.parity_file).write_text(json.dumps(report, indent=2))
    return report


def format_causal_table(report: dict) -> str:
    """The causal parity report as a fixed-width table, one row per variant, naming failed checks."""
    rows = [f"{'variant':<8} {'tokens equal':>12} {'max|dlogit|':>11} {'ROUGE-L':>8} {'BLEU-4':>7} {'ppl':>8}  verdict"]
    torch_ = report["torch"]
    if torch_.get("rouge_l") is not None:
        rows.append(f"{'torch':<8} {'-':>12} {'-':>11} {torch_['rouge_l']:>8.2f} {torch_['bleu4']:>7.2f} "
                    f"{torch_['perplexity']:>8.3f}  reference (training's test_after)")
    for name, v in report["variants"].items():
        failed = [f"{c['name']}={c['value']:.4g} (limit {c['threshold']:.4g})" for c in v["checks"] if not c["passed"]]
        verdict = "PASS, publishable" if v["publishable"] else "FAIL: " + "; ".join(failed)
        prompts = v.get("prompts")
        equal = f"{sum(p['tokens_equal'] for p in prompts)}/{len(prompts)}" if prompts else "-"
        diff = f"{v['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in v else "-"
        rows.append(f"{name:<8} {equal:>12} {diff:>11} {v['rouge_l']:>8.2f} {v['bleu4']:>7.2f} {v['perplexity']:>8.3f}  {verdict}")
    return "\n".join(rows)
