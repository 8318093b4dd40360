"""Merge a LoRA adapter into its base model: ``runs/NAME/adapter`` -> ``runs/NAME/merged``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from peft import PeftModel

from export.contract import CONTRACT
from export.errors import InputError
from training.files import atomic_folder, sha256
from training.model import load_classifier, load_tokenizer

log = logging.getLogger(__name__)

CARRIED_FILES = (CONTRACT.label_map_file, "training_config.json", "heldout.jsonl", "metrics.json")
"""Files of the training run that travel with the model through merge and export."""
SOURCE_FILE = "merge_source.json"


def check_adapter_dir(adapter_dir: Path) -> None:
    if not adapter_dir.is_dir():
        raise InputError(f"adapter dir {adapter_dir} does not exist; train one with `python -m training --name NAME`")
    required = ("adapter_config.json", CONTRACT.label_map_file, "training_config.json")
    missing = [name for name in required if not (adapter_dir / name).is_file()]
    weights = list(adapter_dir.glob("adapter_model.*"))
    if missing or not weights:
        found = sorted(p.name for p in adapter_dir.iterdir())
        raise InputError(f"adapter dir {adapter_dir} is missing {missing or ['adapter_model.safetensors']} (found: {found})")


def merge(adapter_dir: Path, merged_dir: Path) -> Path:
    """Load base + adapter, ``merge_and_unload``, save a plain transformers model. Safe to run twice."""
    check_adapter_dir(adapter_dir)
    weights = sorted(adapter_dir.glob("adapter_model.*"))[0]
    source = {"adapter_dir": str(adapter_dir.resolve()), "adapter_sha256": sha256(weights)}
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
    labels = json.loads((adapter_dir / CONTRACT.label_map_file).read_text())["labels"]
    base_dir = Path(json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
    if not (base_dir / "config.json").is_file():
        raise InputError(f"the adapter's base model {base_dir} (from adapter_config.json) is not a local model folder")
    tokenizer = load_tokenizer(adapter_dir)
    log.info("merging %s into %s", adapter_dir, base_dir)
    model = PeftModel.from_pretrained(load_classifier(base_dir, labels, tokenizer.pad_token_id), adapter_dir)
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
