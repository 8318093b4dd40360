"""The causal LM to fine-tune and its tokenizer: a local Hugging Face folder, or a GGUF file dequantised once.

A GGUF file (the bundled SmolLM2-135M-Instruct by default) is read by transformers (it needs the ``gguf``
package), dequantised to fp32 and saved as an ordinary folder (``config.json``, ``model.safetensors``,
tokenizer files) under ``runs/NAME/base/``: the adapter's ``base_model_name_or_path`` points there, so
merge and export never dequantise again. The converted tokenizer is corrected on the way: GGUF's
metadata gives transformers a BOS that is added to every text and an EOS that is not the model's
(SmolLM2: ``<|im_start|>`` instead of ``<|im_end|>``); the saved tokenizer adds no BOS and uses the
model config's ``eos_token_id`` as its EOS and pad token, so ``tokenizer.json`` alone (no transformers,
as in ``export.generate``) encodes exactly what training saw.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from training.bundled import bundled_causal_lm_file
from training.errors import ModelError
from tunestack.files import atomic_folder

log = logging.getLogger(__name__)

BASE_DIR_NAME = "base"
"""``runs/NAME/base/``: the dequantised GGUF model as a Hugging Face folder."""
GGUF_SOURCE_FILE = "gguf_source.txt"
"""Inside ``runs/NAME/base/``: the GGUF file it was converted from (a folder converted from another is redone)."""


def _gguf_in(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
    return None


def resolve_causal_model_dir(model: Path | None, run_dir: Path) -> Path:
    """The Hugging Face folder to fine-tune: ``model`` itself, or ``run_dir/base`` converted from a GGUF file.

    ``model`` None is the bundled SmolLM2 GGUF; a ``.gguf`` file (or a folder holding exactly one) is converted.
    """
    path = bundled_causal_lm_file() if model is None else Path(model)
    if not path.exists():
        raise ModelError(f"model {path} does not exist (no model hub here: give a local Hugging Face model folder "
                         "or a .gguf file)")
    gguf = _gguf_in(path)
    if gguf is not None:
        return convert_gguf(gguf, run_dir / BASE_DIR_NAME)
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else path.name
        raise ModelError(f"model {path} is neither a Hugging Face folder (config.json) nor a .gguf file (found: {found})")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf`` to an fp32 Hugging Face folder ``out_dir`` (once: a folder from the same file is reused)."""
    marker = out_dir / GGUF_SOURCE_FILE
    if marker.is_file() and marker.read_text().strip() == str(gguf.resolve()):
        log.info("base model already converted: %s", out_dir)
        return out_dir
    started = time.monotonic()
    log.info("dequantising %s to fp32 (transformers + gguf)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fix_tokenizer(tokenizer, model.config.eos_token_id)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / GGUF_SOURCE_FILE).write_text(str(gguf.resolve()) + "\n")
    log.info("converted %s in %.1f s: %.1f M parameters in %s", gguf.name, time.monotonic() - started,
             sum(p.numel() for p in model.parameters()) / 1e6, out_dir)
    return out_dir


def fix_tokenizer(tokenizer: PreTrainedTokenizerBase, eos_token_id: int | list[int] | None) -> None:
    """No BOS added to texts (chat templates write their own markers); EOS and pad = the model's EOS."""
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False  # a fast Llama tokenizer rebuilds its post-processor on this
    if eos_token_id is not None:
        first = eos_token_id[0] if isinstance(eos_token_id, list) else eos_token_id
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(first))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_causal_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of ``model_dir`` (pads on the left for batched generation; pad = EOS when it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(model_dir: Path) -> torch.nn.Module:
    """The causal LM of ``model_dir`` in fp32."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
