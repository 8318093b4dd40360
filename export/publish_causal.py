"""Publish a gated causal LM variant as a new numbered version: ``runs/NAME/onnx/ -> REPOSITORY/MODEL/N/``.

A version folder holds ``model.onnx`` (the variant's decoder under one name), the tokenizer files,
``generation.json``, ``parity.json`` and ``provenance.json`` (variant, task, source run, sha256, configs):
everything ``export.generate.Generator.from_folder`` needs. No ``config.pbtxt`` or ``model.py`` is written:
the served model (a decoupled Triton python model) is the serving stage's, and until it writes its
config the launcher (``serving.triton.repository_models``) leaves the folder alone.

The repository rules are the classifier's (``export.publish``): versions only go up, one is never
overwritten, everything is staged beside the repository and renamed in, a failure leaves it as it was,
and a variant the gate did not mark publishable is refused before the repository is touched. A model
folder that serves a classifier is refused (and the reverse, in ``export.publish``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

from export.config import ExportConfig
from export.contract import CONTRACT, GENERATIVE, GENERATIVE_VARIANT_FILES
from export.errors import GateError, InputError, PublishError
from export.publish import PROVENANCE_FILE, existing_versions, install, staging_dir, write_json
from tunestack import names
from tunestack.files import sha256
from tunestack.tracking import read_link

log = logging.getLogger(__name__)

TASK = "causal-lm"


def version_task(version_dir: Path) -> str | None:
    """The task a published version was exported for (its provenance; classifier versions predate the key)."""
    provenance = version_dir / PROVENANCE_FILE
    return json.loads(provenance.read_text()).get("task", "classification") if provenance.is_file() else None


def _check_source(onnx_dir: Path, variant: str) -> dict:
    """The gate's entry for ``variant``; raise InputError when files are missing, GateError when it failed."""
    if variant not in GENERATIVE_VARIANT_FILES:
        raise InputError(f"unknown variant {variant!r} of a causal LM; expected one of: {', '.join(GENERATIVE_VARIANT_FILES)}")
    needed = [GENERATIVE_VARIANT_FILES[variant], GENERATIVE.tokenizer_file, GENERATIVE.generation_file,
              CONTRACT.parity_file, names.TRAINING_CONFIG_FILE]
    missing = [n for n in needed if not (onnx_dir / n).is_file()]
    if missing:
        found = sorted(p.name for p in onnx_dir.iterdir()) if onnx_dir.is_dir() else "the folder does not exist"
        raise InputError(f"export folder {onnx_dir} is missing {', '.join(missing)} (found: {found})")
    parity = json.loads((onnx_dir / CONTRACT.parity_file).read_text())
    entry = parity.get("variants", {}).get(variant)
    if entry is None or parity.get("task") != TASK:
        raise GateError(f"{onnx_dir / CONTRACT.parity_file} holds no causal-lm gate entry for {variant!r}")
    if entry.get("publishable") is not True:
        failed = [f"{c['name']} = {c['value']:.4g} (threshold {c['threshold']:.4g})"
                  for c in entry.get("checks", []) if not c.get("passed", True)]
        raise GateError(f"variant {variant!r} of {onnx_dir} failed the gate and is not published: "
                        + ("; ".join(failed) or "its entry does not say publishable: true"))
    return entry


def _stage(onnx_dir: Path, variant: str, entry: dict, cfg: ExportConfig, dest: Path, version: int) -> None:
    dest.mkdir(parents=True)
    shutil.copy2(onnx_dir / GENERATIVE_VARIANT_FILES[variant], dest / GENERATIVE.onnx_file)
    for name in (*GENERATIVE.tokenizer_files, GENERATIVE.generation_file, CONTRACT.parity_file):
        if (onnx_dir / name).is_file():
            shutil.copy2(onnx_dir / name, dest / name)
    training = json.loads((onnx_dir / names.TRAINING_CONFIG_FILE).read_text())
    write_json(dest / PROVENANCE_FILE, {
        "model_name": cfg.model_name, "version": version, "variant": variant, "task": TASK,
        "method": training.get("method", "lora"), "training_run": read_link(onnx_dir),
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": {"run": onnx_dir.resolve().parent.name, "onnx_dir": str(onnx_dir.resolve()),
                   "onnx_file": GENERATIVE_VARIANT_FILES[variant]},
        "onnx_sha256": sha256(dest / GENERATIVE.onnx_file), "parity": {k: v for k, v in entry.items() if k != "prompts"},
        "export_config": cfg.to_dict(), "training_config": training,
    })


def publish_causal(onnx_dir: Path, variant: str, cfg: ExportConfig) -> Path:
    """Publish ``variant`` of ``onnx_dir`` as version N+1 of ``cfg.model_name``; return the version folder."""
    onnx_dir = Path(onnx_dir)
    entry = _check_source(onnx_dir, variant)
    repository = Path(cfg.repository)
    model_dir = repository / cfg.model_name
    others = sorted({t for v in existing_versions(model_dir) if (t := version_task(model_dir / str(v))) not in (None, TASK)})
    if others:
        raise PublishError(f"{model_dir} holds {', '.join(others)} versions; refusing to add a causal LM version "
                           "(use another --model-name)")
    created_repository = not repository.exists()
    repository.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(repository)
    try:
        version = 1 + max(existing_versions(model_dir), default=0)
        _stage(onnx_dir, variant, entry, cfg, tmp / "v" / cfg.model_name, version)
        install(repository, tmp, {cfg.model_name: (tmp / "v" / cfg.model_name, None)}, version)
    except OSError as e:
        raise PublishError(f"publishing {variant} of {onnx_dir} to {repository} failed; repository unchanged: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_repository and not any(repository.iterdir()):
            repository.rmdir()
    version_dir = model_dir / str(version)
    log.info("published %s of %s as %s", variant, onnx_dir, version_dir)
    return version_dir
