"""``python -m export``: merge, ONNX, parity gate, publish; flags mirror ``export.config.ExportConfig``."""

from __future__ import annotations

import logging
import sys

from export.config import ExportConfig
from export.errors import ExportError
from export.parity import format_table
from export.pipeline import run_export
from tunestack.cli import parse_dataclass


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_dataclass(
            ExportConfig,
            argv,
            "python -m export",
            "Merge a LoRA adapter, export ONNX (fp32, int8; a causal LM with its KV cache), prove parity on held-out "
            "data, publish to the Triton model repository.",
            errors=(),
        )
        result = run_export(cfg)
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.task == "causal-lm":
        from export.parity_causal import format_causal_table

        print(f"\ngreedy tokens vs torch on {result.parity['parity_prompts']} held-out prompts; ROUGE-L, BLEU-4 and "
              f"perplexity on {result.parity['examples']} ({result.parity['heldout']}):")
        print(format_causal_table(result.parity))
    else:
        print(f"\nparity on {result.parity['examples']} held-out examples ({result.parity['heldout']}):")
        print(format_table(result.parity))
    print(f"\nmerged model: {result.merged_dir}")
    print(f"onnx:         {result.onnx_dir}  (parity.json, export_config.json)")
    for variant, version_dir in result.published.items():
        note = "  (already published: this exact file)" if variant in result.already_published else ""
        print(f"published:    {variant} -> {version_dir}{note}")
    if result.triton_repository:
        print(f"serve it:     tritonserver --model-repository={result.triton_repository} "
              "(AWS_* credentials in the environment)")
    if not result.passed:
        print("\nerror: the gate failed for a requested variant; nothing was published", file=sys.stderr)
        return 1
    if not result.published:
        print("(not published: --no-publish)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
