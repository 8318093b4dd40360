"""Merge the training output into one plain model: ``runs/NAME/adapter`` -> ``runs/NAME/merged``.

The training folder holds either a peft adapter (``adapter_config.json``: lora, ia3, loha), folded
into its base with ``merge_and_unload``, or a whole fine-tuned model (``config.json`` +
``model.safetensors``: full, freeze), copied as it is. Either way ``merged/`` is a plain transformers
classifier or causal LM (``training_config.json``'s task), and ``merge_source.json`` records which weights it
came from (safe to run twice).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from peft import PeftModel

from export.config import training_task
from export.contract import CONTRACT
from export.errors import InputError
from training.causal_model import load_causal_lm
from training.model import load_classifier, load_tokenizer
from tunestack import names
from tunestack.files import atomic_folder, sha256
from tunestack.tracking import TRACKING_FILE

log = logging.getLogger(__name__)

CARRIED_FILES = (CONTRACT.label_map_file, names.TRAINING_CONFIG_FILE, names.HELDOUT_FILE, names.METRICS_FILE, TRACKING_FILE)
"""Files of the training run that travel with the model through merge and export."""
SOURCE_FILE = "merge_source.json"
FULL_MODEL_WEIGHTS = "model.safetensors"
"""The weights file of a full/freeze run (a whole model instead of an adapter)."""


def is_full_model(adapter_dir: Path) -> bool:
    """True when the training folder holds a whole model (full / freeze) rather than a peft adapter."""
    return not (adapter_dir / names.ADAPTER_CONFIG_FILE).is_file() and (adapter_dir / "config.json").is_file()


def check_adapter_dir(adapter_dir: Path) -> None:
    if not adapter_dir.is_dir():
        raise InputError(f"adapter dir {adapter_dir} does not exist; train one with `python -m training --name NAME`")
    labels = (CONTRACT.label_map_file,) if training_task(adapter_dir) == "classification" else ()
    if is_full_model(adapter_dir):
        required, weights = ("config.json", *labels, names.TRAINING_CONFIG_FILE), [adapter_dir / FULL_MODEL_WEIGHTS]
    else:
        required, weights = (names.ADAPTER_CONFIG_FILE, *labels, names.TRAINING_CONFIG_FILE), list(adapter_dir.glob("adapter_model.*"))
    missing = [name for name in required if not (adapter_dir / name).is_file()] + [p.name for p in weights if not p.is_file()]
    if missing or not weights:
        found = sorted(p.name for p in adapter_dir.iterdir())
        raise InputError(f"adapter dir {adapter_dir} is missing {missing or ['adapter_model.safetensors']} "
                         f"(found: {found}); expected a peft adapter (adapter_config.json) or a whole model (config.json)")


def merge(adapter_dir: Path, merged_dir: Path) -> Path:
    """Fold the adapter into its base (or copy a whole model); save a plain transformers model. Safe to run twice."""
    check_adapter_dir(adapter_dir)
    full = is_full_model(adapter_dir)
    weights = adapter_dir / FULL_MODEL_WEIGHTS if full else sorted(adapter_dir.glob("adapter_model.*"))[0]
    method = json.loads((adapter_dir / names.TRAINING_CONFIG_FILE).read_text()).get("method", "lora")
    source = {"adapter_dir": str(adapter_dir.resolve()), "adapter_sha256": sha256(weights), "method": method}
    marker = merged_dir / SOURCE_FILE
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous["adapter_sha256"] == source["adapter_sha256"]:  # same weights, wherever the run now lives
            log.info("already merged: %s", merged_dir)
            return merged_dir
        raise InputError(
            f"{merged_dir} holds a merge of a different adapter ({previous['adapter_dir']}); "
            "remove it or export under another --name"
        )
    if full:
        log.info("%s holds a whole %s-fine-tuned model: copying it to %s", adapter_dir, method, merged_dir)
        with atomic_folder(merged_dir) as tmp:
            for path in adapter_dir.iterdir():
                if path.is_file():
                    shutil.copy2(path, tmp / path.name)
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
        return merged_dir
    base_dir = Path(json.loads((adapter_dir / names.ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"])
    if not (base_dir / "config.json").is_file():
        raise InputError(f"the adapter's base model {base_dir} (from adapter_config.json) is not a local model folder")
    tokenizer = load_tokenizer(adapter_dir)
    log.info("merging %s into %s", adapter_dir, base_dir)
    if training_task(adapter_dir) == "causal-lm":
        base = load_causal_lm(base_dir)
    else:
        labels = json.loads((adapter_dir / CONTRACT.label_map_file).read_text())["labels"]
        base = load_classifier(base_dir, labels, tokenizer.pad_token_id)
    model = PeftModel.from_pretrained(base, adapter_dir)
    merged = model.merge_and_unload()
    with atomic_folder(merged_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        copy_carried(adapter_dir, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return merged_dir


def copy_carried(src: Path, dest: Path) -> None:
    """Copy the training run's files that travel with the model (labels, config, held-out data)."""
    for name in CARRIED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
